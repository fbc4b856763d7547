"""Bad input on every public call, on the real server: a LifecycleError naming the bad value, never a raw
driver or Python error, and nothing written."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifecycle import AsyncLifecycle, FixedClock, Lifecycle, LifecycleError
from lifecycle.ops.embedded import owned_env
from lifecycle.stores.mongo import MongoSnapshotStore
from tests.conftest import REDIS_URL, SettingsFactory

# Anything a caller might hand over by mistake, and a few near misses of valid values.
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.sampled_from(['', ' ', 'a b', 'a|b', '{lc}', 'x' * 129, 'é', 'ok\n', '../x', '-1', '0-0', '$', 'chat-1']),
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def lc(make_reaper_settings: SettingsFactory, real_redis: redis.Redis, tmp_path: Path) -> Iterator[Lifecycle]:
    settings = make_reaper_settings(max_sessions=5, worktree_root=str(tmp_path / 'worktrees'))
    client = Lifecycle(settings, clock=FixedClock())
    yield client
    if isinstance(client.store, MongoSnapshotStore):
        client.store.client.drop_database(settings.mongo_database)
    client.disconnect()


def snapshot(lc: Lifecycle) -> dict[str, Any]:
    """Every key of the pool, dumped (what a call must not change when it refuses)."""
    return {str(key): lc.redis.dump(key) for key in lc.redis.scan_iter(match=lc.index.keys.prefix + '*')}


def refuses_cleanly(lc: Lifecycle, call: Callable[[], Any]) -> None:
    """The call either works, or raises a LifecycleError with nothing of the pool (nor MongoDB) changed."""
    before = snapshot(lc)
    store = lc.store
    assert isinstance(store, MongoSnapshotStore)
    documents_before = store.sessions.count_documents({})
    error: LifecycleError | None = None
    try:
        call()
    except LifecycleError as raised:
        error = raised
    if error is not None:
        assert str(error), 'an error must say what was wrong'
        assert snapshot(lc) == before, f'{error!r} was raised after writing to Redis'
        assert store.sessions.count_documents({}) == documents_before, f'{error!r} was raised after writing to MongoDB'


def reset(lc: Lifecycle) -> None:
    """An empty pool for the next example (Hypothesis runs many in one test): Redis and MongoDB both, or the
    pool would read as one whose Redis lost its state (MongoDB still knowing its live sessions)."""
    for key in lc.redis.scan_iter(match=lc.index.keys.prefix + '*'):
        lc.redis.delete(key)
    store = lc.store
    assert isinstance(store, MongoSnapshotStore)
    for collection in store.collections.values():
        collection.delete_many({})


def live_session(lc: Lifecycle) -> str:
    reset(lc)
    lc.activate(lc.reserve('api-1'), 'live-1')
    return 'live-1'


@FUZZ
@given(owner=junk, tenant=junk, token=junk)
def test_reserve(lc: Lifecycle, owner: Any, tenant: Any, token: Any) -> None:
    reset(lc)
    refuses_cleanly(lc, lambda: lc.reserve(owner, tenant, token=token))


@FUZZ
@given(session_id=junk, ttl=junk, profile=junk, reservation=st.one_of(junk, st.just('valid')))
def test_activate(lc: Lifecycle, session_id: Any, ttl: Any, profile: Any, reservation: Any) -> None:
    reset(lc)
    if reservation == 'valid':
        reservation = lc.reserve('api-1')
    refuses_cleanly(lc, lambda: lc.activate(reservation, session_id, ttl, profile))


@FUZZ
@given(reservation=junk, failed=junk)
def test_release(lc: Lifecycle, reservation: Any, failed: Any) -> None:
    refuses_cleanly(lc, lambda: lc.release(reservation))
    if not isinstance(failed, bool):
        held = lc.reserve('api-1')
        refuses_cleanly(lc, lambda: lc.release(held, failed=failed))
        assert lc.release(held)  # still held: the refused call gave nothing back


@FUZZ
@given(session_id=junk, many=junk)
def test_touch_close_status_and_turn(lc: Lifecycle, session_id: Any, many: Any) -> None:
    live_session(lc)
    refuses_cleanly(lc, lambda: lc.touch(session_id))
    refuses_cleanly(lc, lambda: lc.touch_many(many))
    refuses_cleanly(lc, lambda: lc.status(session_id))

    def turn() -> None:
        with lc.turn(session_id):
            pass

    refuses_cleanly(lc, turn)
    refuses_cleanly(lc, lambda: lc.close(session_id))


@FUZZ
@given(snapshot_=junk, messages=junk, session_id=st.one_of(junk, st.just('live-1')))
def test_checkpoint(lc: Lifecycle, snapshot_: Any, messages: Any, session_id: Any) -> None:
    live_session(lc)
    refuses_cleanly(lc, lambda: lc.checkpoint(session_id, snapshot_, messages))


def is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 10**14


@FUZZ
@given(tenure=junk.filter(lambda value: value is not None and not is_token(value)))
def test_every_call_that_takes_a_tenure(lc: Lifecycle, tenure: Any) -> None:
    live_session(lc)

    def turn() -> None:
        with lc.turn('live-1', tenure=tenure):
            pass

    for call in (
        lambda: lc.checkpoint('live-1', {'v': 1}, [{'id': 'm1'}], tenure=tenure),
        lambda: lc.touch('live-1', tenure=tenure),
        turn,
        lambda: lc.extend('live-1', 60, tenure=tenure),
        lambda: lc.pin('live-1', tenure=tenure),
        lambda: lc.unpin('live-1', tenure=tenure),
        lambda: lc.close('live-1', tenure=tenure),
    ):
        refuses_cleanly(lc, call)
    assert lc.status('live-1') is not None  # none of them was let through


@FUZZ
@given(session_id=junk, owner=junk, pending=junk)
def test_restore(lc: Lifecycle, session_id: Any, owner: Any, pending: Any) -> None:
    refuses_cleanly(lc, lambda: lc.restore(session_id, owner))
    refuses_cleanly(lc, lambda: lc.restore(session_id, owner, approval_pending=pending))


@FUZZ
@given(session_id=st.one_of(junk, st.just('live-1')), ttl=junk)
def test_extend_pin_and_unpin(lc: Lifecycle, session_id: Any, ttl: Any) -> None:
    live_session(lc)
    refuses_cleanly(lc, lambda: lc.extend(session_id, ttl))
    refuses_cleanly(lc, lambda: lc.pin(session_id))
    refuses_cleanly(lc, lambda: lc.unpin(session_id))


@FUZZ
@given(owner=junk, after=junk, block_s=junk)
def test_notices_and_heartbeat(lc: Lifecycle, owner: Any, after: Any, block_s: Any) -> None:
    refuses_cleanly(lc, lambda: list(lc.notices(owner, after=after)))
    refuses_cleanly(lc, lambda: lc.heartbeat(owner))
    if block_s is None or (isinstance(block_s, int | float) and not isinstance(block_s, bool) and 0 < block_s <= 3600):
        return  # valid: no wait, or a wait for notices that never come
    with pytest.raises(LifecycleError, match='block_s'):
        next(iter(lc.notices('api-1', block_s=block_s)))


@FUZZ
@given(run_id=junk, session_id=junk, frame=junk, status=junk, after=junk, count=junk)
def test_runs(lc: Lifecycle, run_id: Any, session_id: Any, frame: Any, status: Any, after: Any, count: Any) -> None:
    refuses_cleanly(lc, lambda: lc.runs.start(run_id, session_id))
    refuses_cleanly(lc, lambda: lc.runs.append(run_id, frame))
    refuses_cleanly(lc, lambda: lc.runs.replay(run_id, after, count))
    refuses_cleanly(lc, lambda: lc.runs.info(run_id))
    refuses_cleanly(lc, lambda: lc.runs.finish(run_id, status))
    reset(lc)
    lc.runs.start('r-ok')
    refuses_cleanly(lc, lambda: lc.runs.append('r-ok', frame))
    refuses_cleanly(lc, lambda: lc.runs.finish('r-ok', status))


@FUZZ
@given(session_id=junk, path=st.one_of(junk, st.sampled_from(['/', '/etc/passwd', 'rel/path', '/tmp/x\x00y'])))
def test_register_worktree(lc: Lifecycle, session_id: Any, path: Any) -> None:
    refuses_cleanly(lc, lambda: lc.register_worktree(session_id, path))


@FUZZ
@given(owner=junk, session_id=junk, ttl=junk, after=junk)
def test_the_async_client(make_reaper_settings: SettingsFactory, owner: Any, session_id: Any, ttl: Any,
                          after: Any) -> None:  # fmt: skip
    sync = Lifecycle(make_reaper_settings(max_sessions=5))

    async def calls() -> None:
        client = aredis.Redis.from_url(REDIS_URL, decode_responses=True)
        async with AsyncLifecycle(sync.settings, redis_client=client, clock=FixedClock()) as lc:
            for call in (
                lambda: lc.reserve(owner),
                lambda: lc.touch(session_id),
                lambda: lc.touch('x', tenure=after),
                lambda: lc.touch_many(session_id),
                lambda: lc.status(session_id),
                lambda: lc.close(session_id),
                lambda: lc.activate(session_id, 'x', ttl),
                lambda: lc.extend(session_id, ttl),
                lambda: lc.extend('x', 60, tenure=after),
                lambda: lc.pin(session_id),
                lambda: lc.pin('x', tenure=after),
                lambda: lc.unpin(session_id),
                lambda: lc.unpin('x', tenure=after),
                lambda: lc.close('x', tenure=after),
                lambda: lc.checkpoint(session_id, {'v': 1}, tenure=ttl),
                lambda: lc.heartbeat(owner),
                lambda: lc.runs.start(session_id),
                lambda: lc.runs.replay('r', after),
                lambda: collect(lc.notices(owner, after=after)),
            ):
                before = snapshot(sync)
                try:
                    await call()
                except LifecycleError:
                    assert snapshot(sync) == before

    async def collect(notices: Any) -> list[Any]:
        return [notice async for notice in notices]

    try:
        asyncio.run(calls())
    finally:
        for key in sync.redis.scan_iter(match=sync.index.keys.prefix + '*'):
            sync.redis.delete(key)
        sync.disconnect()


@pytest.mark.parametrize(
    ('args', 'code', 'says'),
    [
        (['inspect', 'bad id'], 2, "session_id 'bad id' is invalid"),
        (['inspect', 'x' * 200], 2, 'is invalid'),
        (['sweep', 'nope'], 2, 'invalid choice'),
        (['status', '--top', 'many'], 2, "invalid whole number in 1..10000 value: 'many'"),
        (['status', '--top', '0'], 2, "value: '0'"),
        (['status', '--top', '99999999999999999999999'], 2, 'invalid whole number'),
        (['--log-level', 'nope', 'status'], 2, "invalid choice: 'NOPE'"),
        (['exporter', '--port', '-1'], 2, "value: '-1'"),
    ],
)
def test_the_cli_refuses_bad_input_with_its_usage_code(
    make_reaper_settings: SettingsFactory, real_redis: redis.Redis, args: list[str], code: int, says: str
) -> None:
    done = subprocess.run([sys.executable, '-m', 'lifecycle.ops.cli', *args], env=owned_env(make_reaper_settings()),
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == code, done.stderr
    assert says in done.stderr
    assert 'Traceback' not in done.stderr


@pytest.mark.parametrize(
    ('variable', 'value', 'says'),
    [
        ('LIFECYCLE_PROFILES', '{bad', 'LIFECYCLE_PROFILES is not valid JSON'),
        ('LIFECYCLE_TENANT_LIMITS', '[1, 2', 'LIFECYCLE_TENANT_LIMITS is not valid JSON'),
        ('LIFECYCLE_PROFILES', '[1]', 'LIFECYCLE_PROFILES: Input should be a valid dictionary'),
    ],
)
def test_a_malformed_setting_is_one_line_naming_it(
    make_reaper_settings: SettingsFactory, variable: str, value: str, says: str
) -> None:
    env = {**owned_env(make_reaper_settings()), variable: value}
    done = subprocess.run([sys.executable, '-m', 'lifecycle.ops.cli', 'status'], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert says in done.stderr
    assert 'Traceback' not in done.stderr
    assert value not in done.stderr  # a value may be a secret: never echoed


def test_nan_frames_are_refused(lc: Lifecycle) -> None:
    lc.runs.start('r1')
    with pytest.raises(LifecycleError, match='JSON'):
        lc.runs.append('r1', {'x': math.nan})


def test_values_found_by_review_are_refused_by_name(lc: Lifecycle) -> None:
    """Each of these once slipped through (silently, or as a raw error)."""
    from lifecycle.settings import redacted

    with pytest.raises(LifecycleError, match="reservation token ''"):
        lc.reserve('api-1', token='')  # once: a fresh random token, so no idempotency, without a word
    with pytest.raises(LifecycleError, match="make_room must be True or False, got 'no'"):
        lc.reserve('api-1', make_room='no')  # type: ignore[arg-type]
    with pytest.raises(LifecycleError, match='stream id'):
        list(lc.notices('api-1', after=str(2**64)))
    lc.runs.start('r1')
    with pytest.raises(LifecycleError, match='bytes of JSON'):
        lc.runs.append('r1', {'blob': 'x' * (2 * 1024 * 1024)})
    live_session(lc)
    deep: dict[str, Any] = {}
    level = deep
    for _ in range(5_000):
        level['d'] = level = {}
    with pytest.raises(LifecycleError, match='nests deeper'):
        lc.checkpoint('live-1', deep)
    with pytest.raises(LifecycleError, match='cannot be used'):
        lc.register_worktree('live-1', str(Path(lc.settings.worktree_root or '/') / 'bad\udcffname'))
    assert redacted('redis://user:p@ss@host:6379/0') == 'redis://user:***@host:6379/0'


def test_a_resumable_document_missing_its_deadline_is_reported_not_a_raw_error(lc: Lifecycle) -> None:
    store = lc.store
    assert isinstance(store, MongoSnapshotStore)
    store.sessions.insert_one({'_id': 'odd', 'state': 'resumable', 'fence': 1})  # a hand-made document
    with pytest.raises(LifecycleError, match="document of session 'odd' is unusable"):
        lc.restore('odd', 'api-1')
    assert lc.stats().reserved == 0
