"""Workers SIGKILLed or SIGSTOPped mid-eviction: the next sweeps converge, stale workers are fenced off."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lifecycle import Lifecycle, SessionState, Settings
from lifecycle.models import ReapReason
from lifecycle.policy import Order
from lifecycle.reaper.eviction import Evictor, Outcome
from lifecycle.reaper.sweeps import Sweeper, SweepKind
from lifecycle.sandboxes import ProcessDriver
from lifecycle.stores.mongo import MongoSnapshotStore
from tests.conftest import SettingsFactory, group_alive
from tests.integration import procs

SPAWN = multiprocessing.get_context('spawn')


@pytest.fixture
def settings(make_reaper_settings: SettingsFactory, real_redis: Any) -> Settings:
    return make_reaper_settings(claim_lease_s=1, idle_ttl_s=3600)


@pytest.fixture
def lc(settings: Settings) -> Any:
    client = Lifecycle(settings)
    yield client
    if client.store is not None:
        client.store.close()
    client.disconnect()


def start_worker(settings: Settings, session_id: str, **faults: Any) -> tuple[Any, Any]:
    receiver, sender = SPAWN.Pipe(duplex=False)
    config = settings.model_copy(update=faults).model_dump()
    process = SPAWN.Process(target=procs.evict_once, args=(config, session_id, sender))
    process.start()
    return process, receiver


def received(results: Any) -> Any:
    assert results.poll(30), 'the worker died without reporting'
    return results.recv()


def wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + 30
    while Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'T':
        assert time.monotonic() < deadline, 'the worker never reached its pause point'
        time.sleep(0.02)


def sweep_after_claim_lease(lc: Lifecycle, kind: SweepKind = SweepKind.EXPIRED) -> Any:
    time.sleep(lc.settings.claim_lease_s + 0.1)
    evictor = Evictor(lc.pool, lc.store, lc.driver)

    def evict_inline(orders: Sequence[Order]) -> None:
        for order in orders:
            evictor.evict_many([order])

    return Sweeper(lc.pool, evictor, evict_inline).sweep(kind, dedupe=False)


def assert_converged(lc: Lifecycle) -> None:
    """Nothing stuck reaping; nothing out of the pool without its durable write; the counter exact."""
    stats = lc.stats()
    assert stats.reaping == 0
    assert stats.slots == stats.live + stats.reserved
    store = lc.store
    assert isinstance(store, MongoSnapshotStore)
    for document in store.sessions.find():
        if lc.redis.zscore(lc.index.keys.live, document['_id']) is None:
            assert document['state'] == 'resumable'


@pytest.mark.parametrize(
    ('step', 'after_recovery'),
    [
        ('after_claim', SessionState.LIVE),  # no durable write: rolled back
        ('after_persist', SessionState.RESUMABLE),  # durable: completed
        ('after_release', SessionState.RESUMABLE),
    ],
)
def test_a_worker_killed_at_each_step_is_resolved_by_the_next_sweep(
    settings: Settings, lc: Lifecycle, step: str, after_recovery: SessionState
) -> None:
    lc.activate(lc.reserve('api-1'), 's1')
    lc.checkpoint('s1', {'v': 1})
    process, _ = start_worker(settings, 's1', crash_at=step)
    process.join(30)
    assert process.exitcode == -signal.SIGKILL
    assert lc.status('s1').state is SessionState.REAPING  # type: ignore[union-attr]

    report = sweep_after_claim_lease(lc)
    assert [(r.session_id, r.reason) for r in report.recovered] == [('s1', ReapReason.IDLE)]
    assert lc.status('s1').state is after_recovery  # type: ignore[union-attr]
    assert_converged(lc)
    if after_recovery is SessionState.LIVE:
        with lc.turn('s1') as turn:  # usable again
            pass
        assert turn.finished_seq == 1
        lc.checkpoint('s1', {'v': 2})
        result = Evictor(lc.pool, lc.store, lc.driver).evict('s1', ReapReason.IDLE, 2**50)
        assert result.outcome is Outcome.EVICTED
        assert_converged(lc)


def test_a_worker_paused_before_its_write_is_fenced_off_by_the_one_that_took_over(
    settings: Settings, lc: Lifecycle
) -> None:
    lc.activate(lc.reserve('api-1'), 's1')
    lc.checkpoint('s1', {'v': 1})
    process, results = start_worker(settings, 's1', crash_at='after_claim', crash_signal='SIGSTOP')
    assert process.pid is not None
    wait_stopped(process.pid)

    report = sweep_after_claim_lease(lc)  # recovery: no durable write, so back to live, fence raised
    assert [r.outcome for r in report.recovered] == [Outcome.ROLLED_BACK]
    newer = Evictor(lc.pool, lc.store, lc.driver).evict('s1', ReapReason.IDLE, 2**50)
    assert newer.outcome is Outcome.EVICTED
    assert lc.store is not None
    fence = lc.store.load('s1')['fence']  # type: ignore[index]

    os.kill(process.pid, signal.SIGCONT)  # the stale worker resumes with its old token
    process.join(30)
    assert process.exitcode == 0
    assert received(results) == ('kept', 'fenced')  # it lost the race: nothing of its own to undo
    document = lc.store.load('s1')
    assert document is not None
    assert (document['state'], document['fence']) == ('resumable', fence)  # the stale write never landed
    assert_converged(lc)


def test_a_worker_paused_before_its_release_is_fenced_off_after_recovery_completed(
    make_reaper_settings: SettingsFactory, real_redis: Any, tmp_path: Path
) -> None:
    settings = make_reaper_settings(claim_lease_s=1, sandbox_driver='process', sandbox_state_dir=str(tmp_path))
    lc = Lifecycle(settings)
    sandboxes = ProcessDriver(tmp_path)
    lc.activate(lc.reserve('api-1'), 's1')
    first_sandbox = sandboxes.start('s1', ['sleep', '600'], ttl_s=600)
    lc.checkpoint('s1', {'v': 1})
    process, results = start_worker(settings, 's1', crash_at='after_persist', crash_signal='SIGSTOP')
    assert process.pid is not None
    wait_stopped(process.pid)

    report = sweep_after_claim_lease(lc)
    assert [r.outcome for r in report.recovered] == [Outcome.EVICTED]
    deadline = time.monotonic() + 10
    while group_alive(first_sandbox):  # the recovering worker released the evicted session's sandbox
        assert time.monotonic() < deadline
        time.sleep(0.05)
    restored = lc.restore('s1', 'api-2')  # the user comes back before the stale worker wakes
    assert restored.session.state is SessionState.LIVE
    second_sandbox = sandboxes.start('s1', ['sleep', '600'], ttl_s=600)

    os.kill(process.pid, signal.SIGCONT)
    process.join(30)
    assert received(results) == ('kept', 'fenced')
    assert group_alive(second_sandbox), "the stale worker released the restored session's new sandbox"
    assert lc.status('s1').state is SessionState.LIVE  # type: ignore[union-attr]
    assert lc.store is not None
    assert lc.store.load('s1')['state'] == 'live'  # type: ignore[index]
    assert_converged(lc)
    sandboxes.release('s1', 'test over')
    assert not group_alive(second_sandbox)
    lc.store.close()
    lc.disconnect()
