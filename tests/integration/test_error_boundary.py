"""One error boundary: whatever layer meets Redis gone or refusing, the caller sees a LifecycleError
(BackendUnavailable, ScriptFailed), as from the client, never redis-py's own exceptions.

Regression: the sweeps, the reconciler and the worktree cleaner made raw redis-py calls, so a sweep
surfaced `redis.ConnectionError` where the client surfaced `BackendUnavailable`, and a key of the wrong
type (a hand edit) leaked as `ResponseError`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle import BackendUnavailable, Lifecycle
from lifecycle.errors import LifecycleError, ScriptFailed
from lifecycle.models import SweepKind
from lifecycle.reaper.eviction import Evictor
from lifecycle.reaper.sweeps import Sweeper
from tests.conftest import SettingsFactory, start_private_redis, stop_private_redis


def sweeper_of(lc: Lifecycle) -> Sweeper:
    return Sweeper(lc.pool, Evictor(lc.pool, lc.store, lc.driver), lambda orders: None)


@pytest.fixture
def doomed(make_reaper_settings: SettingsFactory, tmp_path: Path) -> Iterator[Lifecycle]:
    """A client of a private Redis that the test stops."""
    url, process = start_private_redis()
    lc = Lifecycle(make_reaper_settings(redis_url=url, worktree_root=str(tmp_path)))
    lc.activate(lc.reserve('api-1'), 's1')
    stop_private_redis(process)
    yield lc
    lc.disconnect()


@pytest.mark.parametrize('kind', list(SweepKind))
def test_every_sweep_meets_a_redis_that_is_gone_with_backend_unavailable(doomed: Lifecycle, kind: SweepKind) -> None:
    with pytest.raises(BackendUnavailable, match='unavailable'):
        sweeper_of(doomed).sweep(kind, dedupe=False)


@pytest.mark.parametrize(
    ('kind', 'key'),
    [
        (SweepKind.WARNINGS, 'warn_cursor'),  # read with HGETALL
        (SweepKind.EXPIRED, 'orphans'),  # read with ZRANGEBYSCORE
        (SweepKind.RECONCILE, 'unsaved'),  # scanned with ZSCAN
        (SweepKind.WORKTREES, 'worktrees'),  # read with HGETALL
    ],
)
def test_a_key_of_the_wrong_type_is_a_script_failure_naming_the_command(
    make_reaper_settings: SettingsFactory, tmp_path: Path, kind: SweepKind, key: str
) -> None:
    lc = Lifecycle(make_reaper_settings(worktree_root=str(tmp_path)))
    try:
        lc.activate(lc.reserve('api-1'), 's1')
        lc.redis.set(getattr(lc.index.keys, key), 'a hand edit')
        with pytest.raises(LifecycleError) as raised:
            sweeper_of(lc).sweep(kind, dedupe=False)
        assert isinstance(raised.value, ScriptFailed), repr(raised.value)
        assert 'WRONGTYPE' in str(raised.value)
    finally:
        for name in ('warn_cursor', 'orphans', 'unsaved', 'worktrees'):
            lc.redis.delete(getattr(lc.index.keys, name))
        lc.disconnect()
