"""Real Celery worker and RedBeat beat processes on the test Redis and MongoDB."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pymongo
import pytest

from lifecycle import Lifecycle, SessionState
from lifecycle.reaper.sweeps import SweepKind
from tests.conftest import SettingsFactory, start_private_redis, stop_private_redis
from tests.integration.conftest import Spawn, skewed, wait_for, worker_args


@pytest.fixture(params=['redis', 'rabbitmq'])
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The workers, beat and the broadcast queue run on both brokers Celery shops use."""
    return str(request.param)


def test_idle_sessions_are_evicted_by_a_real_worker_within_idle_ttl_plus_one_sweep(
    make_reaper_settings: SettingsFactory, broker: str, spawn: Spawn
) -> None:
    # A warning window of 4 s of the 5 s idle TTL: on a loaded machine beat's first ticks may come late.
    settings = make_reaper_settings(
        broker_url=broker, idle_ttl_s=5, idle_interval_s=1, warn_before_s=4, warnings_interval_s=1
    )
    lc = Lifecycle(settings)
    spawn(settings, *worker_args('w1'))
    spawn(settings, 'beat')
    for i in range(5):
        lc.activate(lc.reserve('api-1'), f's{i}')
        lc.checkpoint(f's{i}', {'n': i}, [{'id': 'm1', 'text': f'hello {i}'}])
    busy_turn = lc.turn('s0')
    busy_turn.__enter__()  # s0 stays busy: never idle-evicted
    wait_for(lambda: lc.stats().live == 1, 60, 'the idle sessions to leave the pool')
    assert lc.store is not None
    for i in range(1, 5):
        document = lc.store.load(f's{i}')
        assert document is not None
        assert document['state'] == 'resumable'
        idle_for_s = (document['evicted_at'] - document['last_active_at']).total_seconds()
        # Liveness: idle TTL + one sweep interval, plus queueing and the worker's start (generous).
        assert 5 <= idle_for_s <= 5 + 1 + 10, idle_for_s
    assert lc.status('s0').state is SessionState.LIVE  # type: ignore[union-attr]
    busy_turn.__exit__(None, None, None)

    restored = lc.restore('s3', 'api-2')
    assert restored.sandbox_reset
    assert restored.messages == [{'id': 'm1', 'text': 'hello 3'}]
    assert lc.status('s3').state is SessionState.LIVE  # type: ignore[union-attr]
    kinds = {n.kind.value for n in lc.notices('api-1')}
    assert {'warning', 'evicted'} <= kinds

    # The single-session task (a contract too): an LRU eviction no sweep here would order.
    from workers import create_app

    observed = lc.status('s3').last_active_ms  # type: ignore[union-attr]
    create_app(settings).send_task('lifecycle.evict', args=('s3', 'lru', 0, observed))
    wait_for(lambda: lc.redis.hget(lc.index.keys.counters, 'evicted:lru') == '1', 30, 'the lifecycle.evict task')
    assert lc.status('s3').state is SessionState.RESUMABLE  # type: ignore[union-attr]
    lc.store.close()
    lc.disconnect()


def test_two_workers_and_two_beats_run_each_sweep_once_per_period(
    make_reaper_settings: SettingsFactory, broker: str, spawn: Spawn, tmp_path: Path
) -> None:
    intervals = {f'{kind.value.replace("-", "_")}_interval_s': 1 for kind in SweepKind}
    settings = make_reaper_settings(broker_url=broker, **intervals)
    lc = Lifecycle(settings)
    spawn(settings, *worker_args('w1'))
    spawn(settings, *worker_args('w2'))
    spawn(settings, 'beat')
    spawn(settings, 'beat')
    counters = lc.index.keys.counters
    wait_for(lambda: lc.redis.hget(counters, 'sweep:idle') is not None, 60, 'the first sweep')
    started = time.monotonic()
    before = lc.redis.hgetall(counters)
    time.sleep(8)
    after = lc.redis.hgetall(counters)
    elapsed_s = time.monotonic() - started

    def delta(name: str) -> int:
        return int(after.get(name, 0)) - int(before.get(name, 0))

    for kind in SweepKind:
        ran, skipped = delta(f'sweep:{kind}'), delta(f'sweep_skipped:{kind}')
        if kind is SweepKind.WORKTREES:
            # Broadcast: both workers (one host, one root) get each message; the per-host lock lets one run.
            assert ran <= elapsed_s + 3, (kind, ran, skipped)
            assert skipped >= 1, (kind, ran, skipped)
            continue
        print(f'{kind}: ran {ran}, skipped {skipped} in {elapsed_s:.1f} s')
        # One beat sends each sweep once a second; had both beats sent, about twice as many would arrive.
        assert ran + skipped <= elapsed_s + 3, (kind, ran, skipped)
        assert ran >= elapsed_s / 2 - 1, (kind, ran, skipped)
    lc.disconnect()
    # Each beat's log says what it is: both stood by for the lock, exactly one took the lead.
    logs = [log.read_text(errors='replace') for log in sorted(tmp_path.glob('beat-*.log'))]
    assert all('beat: standing by for the RedBeat lock' in log for log in logs), logs
    assert sum('beat: Acquired lock' in log for log in logs) == 1, logs


@pytest.mark.parametrize('broker_kind', ['redis'])
@pytest.mark.timeout(240)
def test_a_beat_paused_past_its_lock_hands_over_and_stands_by_when_it_resumes(
    make_reaper_settings: SettingsFactory, broker: str, spawn: Spawn, tmp_path: Path
) -> None:
    """Issue 18: the leading beat freezes (SIGSTOP) past its lock's 30 s; the standby takes over, and the sweeps go
    on. Resumed, the old leader finds its lock taken: it stands by (RedBeat's beat exited) and sends nothing. It
    prints the measured takeover."""
    settings = make_reaper_settings(broker_url=broker, idle_interval_s=1)
    lc = Lifecycle(settings)
    counters = lc.index.keys.counters
    spawn(settings, *worker_args('w1'))
    leader = spawn(settings, 'beat')
    wait_for(lambda: lc.redis.hget(counters, 'sweep:idle') is not None, 60, 'the first sweep')
    standby = spawn(settings, 'beat', env=skewed(-300))  # its clock 5 min behind: the schedule runs on Redis's
    wait_for(lambda: 'standing by' in (tmp_path / 'beat-2.log').read_text(errors='replace'), 60, 'the standby')
    os.kill(leader.pid, signal.SIGSTOP)
    frozen = time.monotonic()
    swept = int(lc.redis.hget(counters, 'sweep:idle') or 0)
    try:
        wait_for(lambda: 'beat: Acquired lock' in (tmp_path / 'beat-2.log').read_text(errors='replace'), 60,
                 'the standby to take the lock')  # fmt: skip
        takeover_s = time.monotonic() - frozen
        wait_for(lambda: int(lc.redis.hget(counters, 'sweep:idle') or 0) > swept + 1, 30, 'sweeps sent by it')
        resumed_s = time.monotonic() - frozen
    finally:
        os.kill(leader.pid, signal.SIGCONT)
    wait_for(lambda: 'lost the RedBeat lock' in (tmp_path / 'beat-1.log').read_text(errors='replace'), 30,
             'the old leader to see it lost the lock')  # fmt: skip
    time.sleep(6)  # a tick or more as a standby
    print(
        f'\nleader frozen: the standby took the lock after {takeover_s:.1f} s (lock 30 s + up to one 5 s tick), '
        f'sweeps resumed after {resumed_s:.1f} s; the old leader is {"up" if leader.poll() is None else "gone"}'
    )
    assert leader.poll() is None
    assert standby.poll() is None
    old = (tmp_path / 'beat-1.log').read_text(errors='replace')
    assert 'took the RedBeat lock' not in old  # it stood by
    assert takeover_s <= 30 + 5 + 2
    lc.disconnect()


def test_a_worker_process_killed_mid_eviction_is_redelivered_and_recovered(
    make_reaper_settings: SettingsFactory, broker: str, spawn: Spawn, tmp_path: Path
) -> None:
    settings = make_reaper_settings(
        broker_url=broker, idle_ttl_s=1, idle_interval_s=1, expired_interval_s=1, claim_lease_s=2
    )
    lc = Lifecycle(settings)
    lc.activate(lc.reserve('api-1'), 's1')
    lc.checkpoint('s1', {'v': 1})
    spawn(settings.model_copy(update={'crash_at': 'after_persist'}), *worker_args('w1'), crashes=True)
    spawn(settings, 'beat')
    wait_for(lambda: lc.status('s1').state is SessionState.RESUMABLE, 60, 'recovery to complete the eviction')  # type: ignore[union-attr]
    stats = lc.stats()
    assert (stats.live, stats.reaping, stats.slots) == (0, 0, 0)
    log = next(tmp_path.glob('worker-*.crash')).read_text(errors='replace')
    assert 'SIGKILL' in log or 'WorkerLostError' in log, log[-2000:]
    counters = lc.redis.hgetall(lc.index.keys.counters)
    assert counters.get('evicted:idle') == '1'  # completed once, by recovery; the crashed attempt counted nothing
    lc.disconnect()


def git(*args: str, cwd: Path) -> None:
    env = {**os.environ, 'GIT_AUTHOR_NAME': 't', 'GIT_AUTHOR_EMAIL': 't@x', 'GIT_COMMITTER_NAME': 't',
           'GIT_COMMITTER_EMAIL': 't@x', 'GIT_CONFIG_NOSYSTEM': '1', 'HOME': str(cwd)}  # fmt: skip
    subprocess.run(['git', *args], cwd=cwd, env=env, check=True, capture_output=True)


def git_repository(path: Path) -> Path:
    """A repository with one commit, whose worktrees the hosts' cleaners will find."""
    path.mkdir()
    git('init', '-b', 'main', cwd=path)
    (path / 'README').write_text('hello\n')
    git('add', 'README', cwd=path)
    git('commit', '-m', 'first', cwd=path)
    return path


def test_the_worktree_sweep_reaches_every_host_through_the_broadcast_queue(
    make_settings: SettingsFactory, broker: str, spawn: Spawn, tmp_path: Path
) -> None:
    from workers import create_app

    roots = [tmp_path / 'host-a', tmp_path / 'host-b']
    settings = make_settings(broker_url=broker, worktree_grace_s=60)
    forgotten = [root / f'forgotten-{index}' for index, root in enumerate(roots)]  # each its own session's
    repository = git_repository(tmp_path / 'repository')
    for index, (root, worktree) in enumerate(zip(roots, forgotten, strict=True)):
        root.mkdir()
        git('worktree', 'add', '-b', f'work-{index}', str(worktree), cwd=repository)
        (worktree / 'notes.txt').write_text('work nobody pushed\n')  # so it goes to the trash, with a note
        for path in (worktree / '.git', worktree):
            os.utime(path, (time.time() - 3600, time.time() - 3600))
        spawn(settings.model_copy(update={'worktree_root': str(root)}), *worker_args(f'host{index}'))
    spawn(settings, *worker_args('no-root'))  # a host without worktrees gets a copy and skips it
    app = create_app(settings)
    lc = Lifecycle(settings)
    wait_for(lambda: len(app.control.ping(timeout=0.5) or []) == 3, 60, 'three workers')

    def deliveries() -> int:
        counters = lc.redis.hgetall(lc.index.keys.counters)
        return int(counters.get('sweep:worktrees', 0)) + int(counters.get('sweep_skipped:worktrees', 0))

    def settled() -> int:
        """The delivery count once it has stopped moving (a busy pool runs a copy a little later)."""
        count, deadline = deliveries(), time.monotonic() + 15
        while time.monotonic() < deadline:
            time.sleep(1.5)
            if (now := deliveries()) == count:
                return count
            count = now
        return count

    # A fanout on Redis is pub/sub: a worker still subscribing misses a message, and beat simply sends
    # the next one an interval later. Send as beat would until each host has swept its own root ...
    deadline = time.monotonic() + 90
    while any(worktree.exists() for worktree in forgotten):
        assert time.monotonic() < deadline, 'the roots were never swept'
        app.send_task('lifecycle.sweep_worktrees')
        time.sleep(2)
    # ... then, with every worker subscribed, one message must reach all three of them.
    for _ in range(5):
        before = settled()
        app.send_task('lifecycle.sweep_worktrees')
        if settled() - before == 3:
            break
    else:
        pytest.fail('no single message reached all three workers')
    for root in roots:
        [note] = list((root / '.trash').glob('*.json'))
        assert 'untracked files' in json.loads(note.read_text())['reasons']
    lc.disconnect()


def test_a_worker_refuses_to_start_on_a_redis_that_could_evict_the_pool(
    make_settings: SettingsFactory, spawn: Spawn, tmp_path: Path
) -> None:
    url, server = start_private_redis('--maxmemory-policy', 'allkeys-lru')
    try:
        settings = make_settings(redis_url=url, broker_url=url)
        worker = spawn(settings, *worker_args('refused'))
        assert worker.wait(60) != 0
    finally:
        stop_private_redis(server)
    log = next(tmp_path.glob('worker-*.log')).read_text(errors='replace')
    assert "maxmemory-policy is 'allkeys-lru'" in log, log[-2000:]


def test_a_worker_refuses_to_start_on_a_sessions_collection_that_would_merge_ids(
    make_settings: SettingsFactory, spawn: Spawn, tmp_path: Path, mongo_server_url: str, mongo_database: str
) -> None:
    """Celery logs and ignores what a worker_init handler raises: the refusal must stop the worker itself."""
    admin: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_server_url)
    try:
        admin[mongo_database].create_collection('sessions', collation={'locale': 'en', 'strength': 2})
        settings = make_settings(mongo_url=mongo_server_url, mongo_database=mongo_database)
        worker = spawn(settings, *worker_args('refused'))
        assert worker.wait(60) == 1
    finally:
        admin.close()
    log = next(tmp_path.glob('worker-*.log')).read_text(errors='replace')
    assert "refuses to start: collection 'sessions' compares ids by collation" in log, log[-2000:]
