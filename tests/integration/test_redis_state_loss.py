"""When Redis forgets: a pool whose Redis restarted empty fails closed, is rebuilt from MongoDB by the expiry
sweep, and then holds every guarantee again (issue 13: state loss, on a real redis-server restarted empty)."""

from __future__ import annotations

import contextlib
import multiprocessing
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from bson import Decimal128

from lifecycle import CapacityExceeded, Lifecycle, SessionInfo, SessionState
from lifecycle.errors import Fenced, LifecycleError, PoolRecovering
from lifecycle.models import ReapReason, SweepKind
from lifecycle.ops.cli import explain, reaping_warnings
from lifecycle.pool import calls
from lifecycle.pool.keys import Keys
from lifecycle.reaper.eviction import Outcome
from lifecycle.reaper.rebuild import readmitted
from lifecycle.reaper.reconcile import Reconciler
from lifecycle.sandboxes.process import ProcessDriver
from lifecycle.stores.mongo import MongoSnapshotStore
from tests.conftest import SettingsFactory, group_alive, start_private_redis, stop_private_redis
from tests.integration import procs
from tests.integration.conftest import ReaperFactory, Spawn, wait_for, worker_args
from tests.integration.reaper import Reaper

CAP = 4


@pytest.fixture
def server() -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A private redis-server the test restarts: its URL, and the process running now."""
    url, process = start_private_redis()
    running = [process]
    yield url, running
    stop_private_redis(running[0])


@dataclass
class SnapshotServer:
    """A private redis-server keeping its snapshots in `directory`: `restart()` brings it back from the last one
    (`SAVE`), and every write since is lost."""

    url: str
    directory: Path
    process: subprocess.Popen[bytes]

    def restart(self) -> None:
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis.from_url(self.url).shutdown(nosave=True)
        self.process.wait(10)
        _, self.process = start_private_redis(
            '--dir', str(self.directory), port=int(self.url.rsplit(':', 1)[1].split('/')[0])
        )


@pytest.fixture
def snapshots(tmp_path: Path) -> Iterator[SnapshotServer]:
    url, process = start_private_redis('--dir', str(tmp_path))
    server = SnapshotServer(url, tmp_path, process)
    yield server
    stop_private_redis(server.process)


def restart_empty(url: str, running: list[subprocess.Popen[bytes]]) -> None:
    """`SHUTDOWN NOSAVE`, then the same server started again: everything it held is gone."""
    port = int(url.rsplit(':', 1)[1].split('/')[0])
    client = redis.Redis.from_url(url)
    with contextlib.suppress(redis.ConnectionError):  # the server closes the connection as it goes
        client.shutdown(nosave=True)
    running[0].wait(10)
    _, running[0] = start_private_redis(port=port)


def test_a_pool_whose_redis_restarted_empty_fails_closed_then_is_rebuilt_from_mongodb(
    server: tuple[str, list[subprocess.Popen[bytes]]], make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    url, running = server
    r: Reaper = make_reaper(make_reaper_settings(redis_url=url, max_sessions=CAP, idle_ttl_s=600))
    lc = r.lc
    for name in ('s1', 's2', 's3', 's4'):
        lc.activate(lc.reserve('api-1', 'acme'), name)
    with lc.turn('s2'):
        pass
    lc.checkpoint('s1', {'at': 0})
    lc.checkpoint('s2', {'at': 1})
    r.clock.advance(seconds=600)
    lc.touch('s2')
    lc.touch('s3')
    lc.touch('s4')
    r.sweep(SweepKind.IDLE)  # s1 (checkpointed, idle) is evicted: resumable in MongoDB
    assert [(x.session_id, x.outcome) for x in r.results] == [('s1', Outcome.EVICTED)]

    restart_empty(url, running)

    # Recovering: nothing new is admitted, and the old sessions' calls say why instead of a silent False.
    with pytest.raises(PoolRecovering, match='lost the state'):
        lc.reserve('api-2')
    with pytest.raises(PoolRecovering, match="session 's2' is unknown"):
        lc.touch('s2')
    with pytest.raises(PoolRecovering):
        lc.close('s3')
    with pytest.raises(PoolRecovering), lc.turn('s4'):
        pass
    with pytest.raises(PoolRecovering):
        lc.checkpoint('s2', {'at': 1})
    with pytest.raises(PoolRecovering, match="session 's2' is unknown"):
        lc.pin('s2')  # before: SessionNotLive, as if the app could drop it
    with pytest.raises(PoolRecovering):
        lc.restore('s3', 'api-2')  # live in MongoDB, not yet back in Redis
    assert lc.stats().live == 0
    assert [w for w in reaping_warnings(lc) if w.startswith('POOL NOT VERIFIED')]  # `lifecycle check` says so

    report = r.sweep(SweepKind.EXPIRED)  # the worker notices, and rebuilds
    assert report.rebuilt is not None
    print(f'\nrebuilt: {report.rebuilt}')
    assert (report.rebuilt.readmitted, report.rebuilt.expired) == (3, 0)
    stats = lc.stats()
    assert (stats.live, stats.slots, stats.reserved) == (3, 3, 0)
    s2 = lc.status('s2')
    assert s2 is not None
    # One past what MongoDB knows: turns finished since its checkpoint were lost with Redis, so that checkpoint
    # must not cover it (durable before evicted holds across the loss).
    assert (s2.state, s2.owner, s2.tenant, s2.turn_seq) == (SessionState.LIVE, 'api-1', 'acme', 2)
    r.clock.advance(seconds=1)
    assert lc.touch('s2')  # the old sessions work again
    assert not [w for w in reaping_warnings(lc) if w.startswith('POOL NOT VERIFIED')]

    # The cap holds: one slot is free (3 of 4), no more.
    lc.activate(lc.reserve('api-2'), 's5')
    with pytest.raises(CapacityExceeded):
        lc.reserve('api-2')
    # The resumable session is still restorable, once a slot is free; the epoch is above every old fence,
    # so the rebuilt pool's durable writes go through.
    assert lc.close('s5')
    restored = lc.restore('s1', 'api-2')
    assert restored.snapshot == {'at': 0}
    r.clock.advance(seconds=600)
    lc.touch('s1')
    r.sweep(SweepKind.IDLE)  # no readmitted session goes without a new checkpoint: their owner is asked
    assert [x.detail for x in r.results[1:]] == ['not_checkpointed'] * 3
    lc.checkpoint('s2', {'at': 2})
    r.clock.advance(seconds=1)  # the next sweep: what one keeps, the next one (at a later instant) looks at again
    r.sweep(SweepKind.IDLE)
    evicted = [x.session_id for x in r.results[4:] if x.outcome is Outcome.EVICTED]
    assert evicted == ['s2']  # its durable write was not fenced off: the epoch is above every old token


def test_a_rebuild_readmits_only_its_own_pools_sessions(
    server: tuple[str, list[subprocess.Popen[bytes]]], make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    """Two pools (two key prefixes) sharing one MongoDB database: one losing its Redis takes back its own."""
    url, running = server
    ours = make_reaper(make_reaper_settings(redis_url=url, max_sessions=CAP))
    theirs = make_reaper(make_reaper_settings(max_sessions=CAP, key_prefix=f'{ours.lc.settings.key_prefix}-other'))
    try:
        ours.lc.activate(ours.lc.reserve('api-1'), 'ours-1')
        theirs.lc.activate(theirs.lc.reserve('api-1'), 'theirs-1')
        restart_empty(url, running)
        report = ours.sweep(SweepKind.EXPIRED)
        assert report.rebuilt is not None
        assert report.rebuilt.readmitted == 1
        assert ours.lc.stats().live == 1
        assert ours.lc.pool.run(calls.score(ours.lc.index.keys.live, 'theirs-1')) is None
    finally:  # the other pool lives on the shared test server, under a prefix of its own
        for key in theirs.lc.redis.scan_iter(match=theirs.lc.index.keys.prefix + '*'):
            theirs.lc.redis.delete(key)


def test_a_write_in_flight_from_before_the_loss_cannot_land_after_the_rebuild(
    server: tuple[str, list[subprocess.Popen[bytes]]], make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    # Regression (review): the rebuilt epoch restarted below the tokens the lost Redis had issued, and readmitted
    # sessions kept their old fences, so a worker paused after its claim evicted a session the pool held live.
    url, running = server
    r = make_reaper(make_reaper_settings(redis_url=url, max_sessions=CAP, idle_ttl_s=600))
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 'x')
    lc.checkpoint('x', {'v': 1})
    for _ in range(8):  # tokens the lost Redis issues that never reach MongoDB
        lc.pool.run(lc.index.next_token())
    r.clock.advance(seconds=600)
    [claim] = lc.pool.run_many([r.evictor.claims.claim('x', ReapReason.IDLE, lc.now_ms(), lc.now_ms())])
    assert not isinstance(claim, str)  # a worker claimed x, then paused
    restart_empty(url, running)
    r.sweep(SweepKind.EXPIRED)  # rebuilt: x is live again
    refused, _ = r.evictor._persist({0: claim})  # the paused worker resumes
    assert [x.detail for x in refused.values()] == ['fenced']
    assert (r.document('x') or {})['state'] == 'live'
    lc.checkpoint('x', {'v': 2})  # its owner can checkpoint it
    assert lc.close('x')
    assert (r.document('x') or {})['state'] == 'closed'


def test_a_close_as_redis_loses_the_pool_is_recorded_and_stays_closed_after_the_rebuild(
    server: tuple[str, list[subprocess.Popen[bytes]]],
    make_reaper_settings: SettingsFactory,
    make_reaper: ReaperFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Regression (review): the close drew its token from the emptied epoch, MongoDB refused the write as fenced
    # and dropped it without a word: close() said True, and the rebuild brought the session back.
    url, running = server
    r = make_reaper(make_reaper_settings(redis_url=url, max_sessions=CAP))
    lc = r.lc
    assert r.store is not None
    lc.activate(lc.reserve('api-1'), 'c1')
    for _ in range(3):
        lc.pool.run(lc.index.next_token())
    end = r.store.end

    def lose_then_record(*args: Any) -> Any:  # Redis loses the pool between the close and its durable record
        restart_empty(url, running)
        return end(*args)

    monkeypatch.setattr(r.store, 'end', lose_then_record)
    assert lc.close('c1')
    assert (r.document('c1') or {})['state'] == 'closed'  # its token came with the close: above every fence
    monkeypatch.undo()
    assert r.sweep(SweepKind.EXPIRED).rebuilt is not None
    assert lc.status('c1').state is SessionState.CLOSED  # type: ignore[union-attr]  # not readmitted
    assert lc.stats().live == 0


def test_a_close_while_the_pool_is_being_rebuilt_closes_it_for_good(
    server: tuple[str, list[subprocess.Popen[bytes]]],
    make_reaper_settings: SettingsFactory,
    make_reaper: ReaperFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Regression (issue 13's acceptance run): a close of a session the rebuild had readmitted, before it marked the
    # pool verified, closed it in Redis but said PoolRecovering: its replica kept the sandbox running, uncounted,
    # and MongoDB still called it live (6 closes of 13 sessions at a cap of 12).
    url, running = server
    r = make_reaper(make_reaper_settings(redis_url=url, max_sessions=CAP))
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 'c1')
    lc.activate(lc.reserve('api-1'), 'c2')
    restart_empty(url, running)
    repair = Reconciler.repair
    told: list[object] = []

    def close_during_the_rebuild(self: Reconciler, *args: Any) -> Any:  # c1 is readmitted; not verified yet
        try:
            told.append(lc.close('c1'))
        except LifecycleError as exc:
            told.append(exc)
        return repair(self, *args)

    monkeypatch.setattr(Reconciler, 'repair', close_during_the_rebuild)
    report = r.sweep(SweepKind.EXPIRED)
    assert report.rebuilt is not None
    assert report.rebuilt.readmitted == 2
    assert told == [True]
    assert (r.document('c1') or {})['state'] == 'closed'
    stats = lc.stats()
    assert (stats.live, stats.slots) == (1, 1)  # c2 only


def test_sessions_recorded_before_activations_named_their_pool_are_readmitted(
    server: tuple[str, list[subprocess.Popen[bytes]]], make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    # Regression (review): an upgraded pool's live documents carry no pool, and were never readmitted.
    url, running = server
    r = make_reaper(make_reaper_settings(redis_url=url, max_sessions=CAP))
    r.lc.activate(r.lc.reserve('api-1'), 'old-1')
    assert isinstance(r.store, MongoSnapshotStore)
    r.store.sessions.update_one({'_id': 'old-1'}, {'$unset': {'pool': ''}})
    restart_empty(url, running)
    with pytest.raises(PoolRecovering):
        r.lc.reserve('api-1')
    assert r.sweep(SweepKind.EXPIRED).rebuilt.readmitted == 1  # type: ignore[union-attr]


def test_a_redis_restarted_from_an_older_snapshot_fails_closed_until_the_missing_writes_are_readmitted(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, snapshots: SnapshotServer
) -> None:
    # Regression (issue 13): Redis came back from its last snapshot, which kept the generation marker but not the
    # sessions activated after it; the pool took itself for intact and admitted past the cap (6 live at a cap of 4).
    r = make_reaper(make_reaper_settings(redis_url=snapshots.url, max_sessions=CAP))
    lc = r.lc
    for name in ('s1', 's2'):
        lc.activate(lc.reserve('api-1'), name)
    lc.redis.save()  # the snapshot Redis will come back from
    for name in ('s3', 's4'):  # written after it: lost in the restart, while their sandboxes run on
        lc.activate(lc.reserve('api-1'), name)
    snapshots.restart()
    assert lc.stats().live == 2  # the marker came back with the snapshot; s3 and s4 did not

    with pytest.raises(PoolRecovering, match='restarted or failed over'):
        lc.reserve('api-2')
    with pytest.raises(PoolRecovering, match="session 's3' is unknown"):
        lc.touch('s3')

    report = r.sweep(SweepKind.EXPIRED)
    assert report.rebuilt is not None
    assert report.rebuilt.verified
    print(f'\nlost in the restart and readmitted: {report.rebuilt.readmitted}')
    assert report.rebuilt.readmitted == 2
    stats = lc.stats()
    assert (stats.live, stats.slots) == (CAP, CAP)
    with pytest.raises(CapacityExceeded):
        lc.reserve('api-2')
    r.clock.advance(seconds=1)
    assert lc.touch('s3')


@pytest.mark.timeout(300)
def test_a_redis_restarted_empty_under_replicas_a_worker_and_beat(
    server: tuple[str, list[subprocess.Popen[bytes]]],
    make_reaper_settings: SettingsFactory,
    broker: str,
    spawn: Spawn,
) -> None:
    """Issue 13's acceptance: three API replica processes, a worker and beat running; `redis-cli shutdown nosave`
    and a restart. During and after recovery the running sandboxes never exceed the cap, every checkpointed
    session is live again or restorable, none is lost or counted twice, and every call either works or fails
    clearly. RedBeat keeps its schedule on the broker's Redis here (the beat riding out a restart is
    `test_beat_and_worker_ride_out_a_redis_restart_and_the_sweeps_resume`)."""
    url, running = server
    cap = 12
    settings = make_reaper_settings(redis_url=url, max_sessions=cap, broker_url=broker, beat_redis_url=broker,
                                    expired_interval_s=2, reconcile_interval_s=5)  # fmt: skip
    spawn(settings, *worker_args('w1'))
    spawn(settings, 'beat')
    lc = Lifecycle(settings)
    context = multiprocessing.get_context('spawn')
    manager = context.Manager()
    stop, held, guard, counts = manager.Event(), manager.dict(), manager.Lock(), manager.Queue()
    config = settings.model_dump(mode='json', exclude_defaults=True)
    replicas = [context.Process(target=procs.replica_through_a_loss, args=(config, i, stop, held, guard, counts))
                for i in range(3)]  # fmt: skip
    for replica in replicas:
        replica.start()
    most = 0

    def running_now() -> set[str]:
        with guard:  # one consistent view of every replica's sandboxes
            return {session for sessions in held.values() for session in sessions}

    def watch(seconds: float) -> None:
        nonlocal most
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            most = max(most, len(running_now()))
            time.sleep(0.01)

    watch(4)
    port = url.rsplit(':', 1)[1].split('/')[0]
    subprocess.run(['redis-cli', '-p', port, 'shutdown', 'nosave'], check=False, capture_output=True, timeout=10)
    running[0].wait(10)
    before = running_now()  # every one was checkpointed when it was admitted
    lost_at = time.monotonic()
    watch(1)  # Redis is down for a second
    _, running[0] = start_private_redis(port=int(port))
    while not lc.pool.run(lc.index.pool_state()).ready:
        watch(0.1)
        assert time.monotonic() - lost_at < 60, 'the worker did not rebuild the pool within 60 s'
    recovered_s = time.monotonic() - lost_at
    watch(4)  # admissions resume
    stop.set()
    outcomes = [counts.get(timeout=30) for _ in replicas]
    for replica in replicas:
        replica.join(30)
    manager_counts: dict[str, int] = {}
    still_held: set[str] = set()
    for _, tally, mine in outcomes:
        still_held |= set(mine)
        for what, n in tally.items():
            manager_counts[what] = manager_counts.get(what, 0) + n
    manager.shutdown()

    with redis.Redis.from_url(url, decode_responses=True) as raw:
        live = set(raw.zrange(lc.index.keys.live, 0, -1))
    stats = lc.stats()
    statuses = {session: lc.status(session) for session in before - live}
    # Live again, restorable, or closed since by its replica once the pool was back.
    not_back = [s for s, info in statuses.items()
                if info is None or info.state not in (SessionState.RESUMABLE, SessionState.CLOSED)]  # fmt: skip
    print(
        f'\nstate loss: {len(before)} sandboxes running when Redis went down; pool rebuilt {recovered_s:.1f} s '
        f'after the loss; most running at once {most} (cap {cap}); afterwards {len(live)} live, '
        f'{stats.slots} slots; not live nor restorable: {len(not_back)}; calls: {dict(sorted(manager_counts.items()))}'
    )
    assert most <= cap
    assert not not_back  # every checkpointed session is live again or restorable
    assert still_held <= live  # none lost: each replica's sessions are in the pool...
    assert live <= still_held  # ...and nothing else is (none counted twice, no stray)
    assert (stats.live, stats.slots, stats.reserved) == (len(still_held), len(still_held), 0)
    assert not [what for what in manager_counts if what.startswith(('SILENT', 'other'))]
    assert manager_counts.get('refused: recovering', 0) + manager_counts.get('redis unavailable', 0) > 0
    assert manager_counts.get('admitted', 0) > 0
    lc.disconnect()


def test_a_rebuild_releases_sandboxes_no_session_vouches_for_and_keeps_the_others(
    server: tuple[str, list[subprocess.Popen[bytes]]],
    make_reaper_settings: SettingsFactory,
    make_reaper: ReaperFactory,
    tmp_path: Path,
) -> None:
    # Regression (issue 13): the rebuild read MongoDB only. A sandbox left running for no live session (here its
    # session never got activated before Redis went; a session closed while the pool was lost is the same) ran on
    # until its own deadline, hours away. It is released once a reservation's lease has passed, not at once.
    url, running = server
    driver = ProcessDriver(tmp_path)
    r = make_reaper(make_reaper_settings(redis_url=url, max_sessions=CAP), driver=driver)
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 'kept')
    kept = driver.start('kept', ['sleep', '600'], ttl_s=600)
    ghost = driver.start('ghost', ['sleep', '600'], ttl_s=600)  # started; its activation never happened
    try:
        restart_empty(url, running)
        report = r.sweep(SweepKind.EXPIRED)
        assert report.rebuilt is not None
        assert (report.rebuilt.readmitted, report.rebuilt.orphaned) == (1, 1)
        # Not at once: a reservation that outlived the loss (a failover keeps them) may be about to activate it.
        assert report.released_sandboxes == []
        r.clock.advance(seconds=r.lc.settings.reservation_lease_s)
        assert r.sweep(SweepKind.EXPIRED).released_sandboxes == ['ghost']
        deadline = time.monotonic() + 10
        while group_alive(ghost) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not group_alive(ghost)
        assert group_alive(kept)
        assert [lease.session_id for lease in driver.leases()] == ['kept']
    finally:
        driver.release('kept', 'test over')
        driver.release('ghost', 'test over')


def test_a_close_racing_a_rebuild_of_a_pool_that_kept_its_sessions_stays_closed(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression (review): after a restart or failover the rebuild runs over a pool that still holds its sessions.
    # A close whose MongoDB record had not landed when the rebuild read MongoDB was readmitted, its fence raised
    # above the close's token, and the close's record refused: close() said True, the session was live again.
    r = make_reaper(make_reaper_settings(max_sessions=CAP))
    lc = r.lc
    assert r.store is not None
    lc.activate(lc.reserve('api-1'), 'c1')
    lc.activate(lc.reserve('api-1'), 'c2')
    lc.redis.delete(lc.index.keys.verified)
    lc.redis.set(lc.index.keys.verified, 'a history before a failover')
    end = r.store.end

    def rebuild_then_record(*args: Any) -> Any:  # the rebuild runs between the close and its MongoDB record
        report = r.sweep(SweepKind.EXPIRED)
        assert report.rebuilt is not None
        assert report.rebuilt.readmitted == 0
        return end(*args)

    monkeypatch.setattr(r.store, 'end', rebuild_then_record)
    assert lc.close('c1')
    monkeypatch.undo()
    assert (r.document('c1') or {})['state'] == 'closed'
    assert lc.status('c1').state is SessionState.CLOSED  # type: ignore[union-attr]
    stats = lc.stats()
    assert (stats.live, stats.slots) == (1, 1)


def test_a_pool_from_before_verification_adopts_its_servers_history_and_admits(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    # Regression (review): an upgraded pool (a marker, no verified key) refused every reservation with
    # PoolRecovering until a new worker's sweep rebuilt it, a full rebuild over a hot pool.
    r = make_reaper(make_reaper_settings(max_sessions=CAP))
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 'old')
    lc.redis.delete(lc.index.keys.verified)  # as the version before wrote it
    lc.activate(lc.reserve('api-1'), 'new')
    assert lc.pool.run(lc.index.pool_state()).ready
    assert r.sweep(SweepKind.EXPIRED).rebuilt is None
    assert lc.stats().live == 2


def test_after_a_rebuild_a_replica_that_heartbeats_must_vouch_for_its_sessions_within_a_heartbeat_lease(
    server: tuple[str, list[subprocess.Popen[bytes]]], make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    # Issue 13: heartbeats are lost with Redis. A replica that died while the pool was lost never heartbeats again,
    # so it was never seen as lost, and its readmitted sessions held their slots until they idled out (30 min).
    url, running = server
    r = make_reaper(make_reaper_settings(redis_url=url, max_sessions=CAP))
    lc = r.lc
    for owner in ('api-1', 'api-dead'):
        lc.start_heartbeat(owner).stop()  # both heartbeat (and say so durably); api-quiet never does
    for owner, session_id in (('api-1', 's1'), ('api-dead', 's2'), ('api-quiet', 's3')):
        lc.activate(lc.reserve(owner), session_id)
        lc.checkpoint(session_id, {'owner': owner})
    restart_empty(url, running)
    assert r.sweep(SweepKind.EXPIRED).rebuilt is not None
    r.clock.advance(seconds=lc.settings.replica_ttl_s - 1)
    lc.heartbeat('api-1')  # alive: it vouches for s1
    r.sweep(SweepKind.OWNER_LOST)
    assert lc.stats().live == 3  # within the lease, nobody is lost yet
    r.clock.advance(seconds=2)
    r.sweep(SweepKind.OWNER_LOST)
    # Its owner is lost. Its turns since the last checkpoint may be lost with Redis, so it is first asked for a
    # checkpoint nobody will give; once the grace has run out it is evicted with the last one it has.
    assert [(x.session_id, x.outcome, x.detail) for x in r.results] == [('s2', Outcome.ABORTED, 'not_checkpointed')]
    r.clock.advance(seconds=lc.settings.checkpoint_grace_s)
    lc.heartbeat('api-1')
    r.sweep(SweepKind.OWNER_LOST)
    assert [(x.session_id, x.outcome) for x in r.results[1:]] == [('s2', Outcome.EVICTED)]
    document = r.document('s2') or {}
    assert (document['state'], document['snapshot']) == ('resumable', {'owner': 'api-dead'})  # durable, restorable
    assert {s for s in ('s1', 's3') if lc.status(s).state is SessionState.LIVE} == {'s1', 's3'}  # type: ignore[union-attr]


@pytest.mark.timeout(300)
def sweeping(
    url: str, broker_url: str, make_reaper_settings: SettingsFactory, spawn: Spawn
) -> tuple[subprocess.Popen[bytes], redis.Redis, Callable[[], int]]:
    """A worker and a beat (RedBeat on `url`, database 3) sweeping the pool on `url` every 2 s, once the first idle
    sweep ran: the beat process, a client of `url`, and how many idle sweeps have run."""
    settings = make_reaper_settings(redis_url=url, broker_url=broker_url, beat_redis_url=url.rsplit('/', 1)[0] + '/3',
                                    idle_interval_s=2, expired_interval_s=2)  # fmt: skip
    spawn(settings, *worker_args('w1'))
    beat = spawn(settings, 'beat')
    counters = Keys.for_prefix(settings.key_prefix).counters
    client = redis.Redis.from_url(url, decode_responses=True)

    def sweeps() -> int:
        return int(client.hget(counters, 'sweep:idle') or 0)

    wait_for(lambda: sweeps() > 0, 60, 'the first idle sweep')
    return beat, client, sweeps


def test_beat_and_worker_ride_out_a_redis_restart_and_the_sweeps_resume(
    server: tuple[str, list[subprocess.Popen[bytes]]], make_reaper_settings: SettingsFactory, spawn: Spawn
) -> None:
    """Issue 18, hole 5: one Redis holds the pool, the broker and RedBeat's schedule and lock; it restarts empty
    (down for 3 s). The beat must not exit (a tick during the outage, and the lock gone after it), the schedule
    must be installed again, and the sweeps resume within one period plus the lock's TTL."""
    url, running = server
    beat, client, sweeps = sweeping(url, url.rsplit('/', 1)[0] + '/2', make_reaper_settings, spawn)

    def swept() -> bool:
        with contextlib.suppress(redis.ConnectionError):
            return sweeps() > 0
        return False

    port = int(url.rsplit(':', 1)[1].split('/')[0])
    with contextlib.suppress(redis.ConnectionError):  # the pool, the queue, the schedule and the lock go with it
        client.shutdown(nosave=True)
    running[0].wait(10)
    time.sleep(3)  # the beat ticks at least once while Redis is down
    _, running[0] = start_private_redis(port=port)
    back = time.monotonic()
    limit_s = 2 + 30 + 5  # one period, the lock's TTL, one beat tick
    wait_for(lambda: swept() or beat.poll() is not None, limit_s + 30, 'an idle sweep after the restart')
    gap = time.monotonic() - back
    print(
        f'\nRedis restarted empty (down 3 s): beat {"running" if beat.poll() is None else "exited"}; '
        f'first idle sweep {gap:.1f} s after Redis was back'
    )
    assert beat.poll() is None, 'the beat exited'
    assert gap <= limit_s
    client.close()


def test_beat_rides_out_a_master_that_takes_no_writes_for_want_of_replicas(
    server: tuple[str, list[subprocess.Popen[bytes]]], make_reaper_settings: SettingsFactory, broker: str, spawn: Spawn
) -> None:
    """A master under `min-replicas-to-write` whose replicas are gone refuses every write (NOREPLICAS) until they are
    back: the beat (its schedule and lock on that master, with the pool) must stand by through it, not exit, and
    the sweeps resume once writes are taken again. (The broker is another Redis: Celery's worker exits on a broker
    that refuses its BRPOP, and its supervisor restarts it; see deploy/.)"""
    beat, client, sweeps = sweeping(server[0], broker, make_reaper_settings, spawn)
    client.config_set('min-replicas-to-write', 1)  # no replica: every write is refused
    time.sleep(7)  # the beat ticks (every 5 s at most) while no write is taken
    client.config_set('min-replicas-to-write', 0)
    before = sweeps()
    wait_for(lambda: sweeps() > before or beat.poll() is not None, 30, 'an idle sweep once writes are taken again')
    assert beat.poll() is None, 'the beat exited'
    client.close()


def test_a_redis_that_lost_an_eviction_and_a_restore_gives_the_pool_back_to_the_life_mongodb_holds(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, snapshots: SnapshotServer
) -> None:
    """Redis comes back from a snapshot taken while A held s1: it lost s1's eviction and B's restore, and holds
    A's earlier life (its tenure). The rebuild gives s1 back to the life MongoDB holds (B's): B's writes go
    through, A's are refused. And A's close, should it come before the rebuild, never marks B's life closed in
    MongoDB (before: the rebuild left A's record, B's touch was Fenced, and A's close ended B's life)."""
    r = make_reaper(make_reaper_settings(redis_url=snapshots.url, max_sessions=CAP, idle_ttl_s=600))
    lc = r.lc
    a = lc.activate(lc.reserve('api-a'), 's1', ttl_seconds=3600)
    a2 = lc.activate(lc.reserve('api-a'), 's2', ttl_seconds=3600)
    lc.checkpoint('s1', {'by': 'A'}, tenure=a.tenure)
    lc.checkpoint('s2', {'by': 'A'})
    lc.redis.save()  # the snapshot Redis will come back from: A holds s1 and s2
    r.clock.advance(seconds=601)
    for name in ('s1', 's2'):
        assert r.evictor.evict(name, ReapReason.IDLE, r.clock.now_ms()).outcome is Outcome.EVICTED
    b1 = lc.restore('s1', 'api-b').session
    b2 = lc.restore('s2', 'api-b').session
    assert b1.tenure is not None
    assert a.tenure is not None
    assert b1.tenure > a.tenure
    snapshots.restart()
    held = lc.status('s1')
    assert held is not None
    assert (held.owner, held.tenure) == ('api-a', a.tenure)  # A's life is back in Redis

    # Before the rebuild, A's close of s2 is taken by its stale copy in Redis, but not by MongoDB; and B's own
    # writes are refused by that copy. Neither can tell yet whose life it is: both are told to retry once the
    # pool is rebuilt (PoolRecovering; before, B was told Fenced, as if its own copy were the stale one).
    with pytest.raises(PoolRecovering, match='earlier life'):
        lc.close('s2', tenure=a2.tenure)
    s2 = r.document('s2') or {}
    assert (s2['state'], s2['tenure']) == ('live', b2.tenure)
    with pytest.raises(PoolRecovering, match='earlier life'):
        lc.touch('s1', tenure=b1.tenure)
    with pytest.raises(PoolRecovering, match='earlier life'):
        lc.close('s1', tenure=b1.tenure)
    with pytest.raises(PoolRecovering, match='earlier life'):
        lc.checkpoint('s1', {'by': 'B'}, tenure=b1.tenure)
    with pytest.raises(PoolRecovering, match='earlier life'):
        lc.pin('s1', tenure=b1.tenure)
    with pytest.raises(PoolRecovering, match='earlier life'):
        lc.unpin('s1', tenure=b1.tenure)

    report = r.sweep(SweepKind.EXPIRED)
    assert report.rebuilt is not None
    print(f'\nrebuilt after a restart that lost an eviction and a restore: {report.rebuilt}')
    assert report.rebuilt.readmitted == 2  # s1 replaced in place, s2 taken back
    for name, b in (('s1', b1), ('s2', b2)):
        now = lc.status(name)
        assert now is not None
        assert (now.owner, now.tenure) == ('api-b', b.tenure)  # the life MongoDB holds
    assert (lc.stats().live, lc.stats().slots) == (2, 2)
    r.clock.advance(seconds=1)
    assert lc.touch('s1', tenure=b1.tenure)
    assert lc.touch('s2', tenure=b2.tenure)
    with pytest.raises(Fenced):
        lc.touch('s1', tenure=a.tenure)
    with pytest.raises(Fenced):
        lc.close('s1', tenure=a.tenure)
    document = r.document('s1') or {}
    assert (document['state'], document['tenure'], document['owner']) == ('live', b1.tenure, 'api-b')
    assert lc.close('s1', tenure=b1.tenure)  # B's retry
    assert lc.close('s2', tenure=b2.tenure)
    assert (lc.stats().live, (r.document('s2') or {})['state']) == (0, 'closed')


def test_a_life_given_back_by_the_rebuild_keeps_nothing_of_the_earlier_one(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, snapshots: SnapshotServer
) -> None:
    """The earlier life Redis came back with had been asked for a checkpoint (and the trail recorded it): the life
    the rebuild gives the session back to is asked afresh, never waived for that old request (before: its
    idle eviction went ahead as checkpoint_waived without B ever being asked), and its trail starts empty."""
    r = make_reaper(make_reaper_settings(redis_url=snapshots.url, max_sessions=CAP, idle_ttl_s=600,
                                         checkpoint_grace_s=60, trail_length=5))  # fmt: skip
    lc, keys = r.lc, r.lc.index.keys
    a = lc.activate(lc.reserve('api-a'), 's1', ttl_seconds=3600)
    with lc.turn('s1', tenure=a.tenure):  # a turn not checkpointed
        pass
    r.clock.advance(seconds=601)
    assert r.evictor.evict('s1', ReapReason.IDLE, r.clock.now_ms()).detail == 'not_checkpointed'  # A is asked
    assert lc.redis.zscore(keys.unsaved, 's1') is not None
    lc.redis.save()  # the snapshot Redis will come back from: A's life, its checkpoint requested
    lc.checkpoint('s1', {'by': 'A'}, tenure=a.tenure)
    assert r.evictor.evict('s1', ReapReason.IDLE, r.clock.now_ms()).outcome is Outcome.EVICTED
    b = lc.restore('s1', 'api-b').session
    snapshots.restart()
    report = r.sweep(SweepKind.EXPIRED)
    assert report.rebuilt is not None
    status = lc.status('s1')
    assert status is not None
    assert (status.owner, status.tenure) == ('api-b', b.tenure)
    assert lc.redis.zscore(keys.unsaved, 's1') is None
    assert lc.redis.hget(keys.trail, 's1') is None
    r.clock.advance(seconds=601)
    result = r.evictor.evict('s1', ReapReason.IDLE, r.clock.now_ms())
    assert (result.outcome, result.detail) == (Outcome.ABORTED, 'not_checkpointed')  # B is asked, not waived


def test_a_stale_copy_s_eviction_or_expiry_before_the_rebuild_never_lands_on_the_later_life(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, snapshots: SnapshotServer
) -> None:
    """Redis came back holding A's earlier life of s1 (B restored it since, ran a turn, checkpointed and extended
    it): that copy looks idle, and the idle sweep runs before the expiry sweep's rebuild. Its eviction write is
    refused by the later life MongoDB holds (before: B's live life was made resumable under A's owner and A's
    deadline); the rebuild then gives s1 back to B. An expiry of a stale copy leaves the later life alone too."""
    r = make_reaper(make_reaper_settings(redis_url=snapshots.url, max_sessions=CAP, idle_ttl_s=600))
    lc = r.lc
    a = lc.activate(lc.reserve('api-a'), 's1', ttl_seconds=3600)
    lc.checkpoint('s1', {'by': 'A'}, tenure=a.tenure)
    a2 = lc.activate(lc.reserve('api-a'), 's2', ttl_seconds=700)
    lc.checkpoint('s2', {'by': 'A'}, tenure=a2.tenure)
    lc.redis.save()  # the snapshot Redis will come back from: A's lives
    r.clock.advance(seconds=601)
    for name in ('s1', 's2'):
        assert r.evictor.evict(name, ReapReason.IDLE, r.clock.now_ms()).outcome is Outcome.EVICTED
    b = lc.restore('s1', 'api-b').session
    with lc.turn('s1', tenure=b.tenure):
        pass
    lc.checkpoint('s1', {'by': 'B'}, tenure=b.tenure)
    lc.extend('s1', 7200, tenure=b.tenure)
    b2 = lc.restore('s2', 'api-b').session
    lc.extend('s2', 7200, tenure=b2.tenure)
    before = {name: r.document(name) or {} for name in ('s1', 's2')}
    snapshots.restart()
    r.clock.advance(seconds=120)  # A's copy of s1 idle; A's copy of s2 past the deadline it had
    r.sweep(SweepKind.IDLE)
    expired = r.evictor.evict('s2', ReapReason.EXPIRED, r.clock.now_ms())  # as the expiry sweep's task would
    swept = [(x.session_id, x.outcome, x.detail) for x in r.results]
    print(f'\nthe stale copies, swept before the rebuild: {swept}, {expired}')
    assert ('s1', Outcome.KEPT, 'unverified') in swept  # no eviction before the rebuild (MongoDB would fence it)
    for name, life in (('s1', b), ('s2', b2)):
        document = r.document(name) or {}
        assert (document['state'], document['owner'], document['tenure']) == ('live', 'api-b', life.tenure)
        assert document['expires_at'] == before[name]['expires_at']
    assert (r.document('s1') or {})['snapshot'] == {'by': 'B'}
    r.sweep(SweepKind.EXPIRED)  # the rebuild
    for name, life in (('s1', b), ('s2', b2)):
        status = lc.status(name)
        assert status is not None
        assert (status.state, status.owner, status.tenure) == (SessionState.LIVE, 'api-b', life.tenure)


def test_a_stale_copy_of_a_life_mongodb_holds_resumable_is_ended_by_the_rebuild(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, snapshots: SnapshotServer
) -> None:
    """A's life in the snapshot; then A evicted, B restored and evicted in turn: MongoDB holds B's life resumable.
    Redis comes back with A's copy. The rebuild ends that copy (MongoDB refuses its eviction, fenced by the later
    life), and B's life is restorable at once (before: every eviction of the copy was kept, fenced, and B's
    restore was refused, SessionExists, until the copy's hard deadline)."""
    r = make_reaper(make_reaper_settings(redis_url=snapshots.url, max_sessions=CAP, idle_ttl_s=600))
    lc = r.lc
    a = lc.activate(lc.reserve('api-a'), 's1', ttl_seconds=4 * 3600)
    lc.checkpoint('s1', {'by': 'A'}, tenure=a.tenure)
    lc.redis.save()  # the snapshot Redis will come back from: A's life
    r.clock.advance(seconds=601)
    assert r.evictor.evict('s1', ReapReason.IDLE, r.clock.now_ms()).outcome is Outcome.EVICTED
    b = lc.restore('s1', 'api-b').session
    lc.checkpoint('s1', {'by': 'B'}, tenure=b.tenure)
    r.clock.advance(seconds=601)
    assert r.evictor.evict('s1', ReapReason.IDLE, r.clock.now_ms()).outcome is Outcome.EVICTED
    snapshots.restart()
    report = r.sweep(SweepKind.EXPIRED)
    assert report.rebuilt is not None
    print(f'\nrebuilt: {report.rebuilt}')
    assert report.rebuilt.ended == 1
    assert lc.stats().live == 0
    restored = lc.restore('s1', 'api-b')
    assert restored.snapshot == {'by': 'B'}


def evicted_after_the_snapshot(r: Reaper) -> SessionInfo:
    """A's s1, checkpointed; Redis writes its snapshot; s1 is evicted (idle). Returns A's activation."""
    a = r.lc.activate(r.lc.reserve('api-a'), 's1', ttl_seconds=3600)
    r.lc.checkpoint('s1', {'by': 'A'}, tenure=a.tenure)
    r.lc.redis.save()
    r.clock.advance(seconds=601)
    assert r.evictor.evict('s1', ReapReason.IDLE, r.clock.now_ms()).outcome is Outcome.EVICTED
    return a


def test_an_eviction_whose_last_step_redis_lost_is_finished_by_the_rebuild(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, snapshots: SnapshotServer
) -> None:
    """Redis comes back from a snapshot taken before s1's eviction: MongoDB holds s1 resumable (the same life), Redis
    live. The rebuild finishes the eviction in Redis, and s1 is restorable at once (before: it stayed live in Redis
    and resumable in MongoDB until an idle sweep evicted it again: its app's checkpoints were refused, and so was
    a restore, SessionExists, for as long as the app kept it busy)."""
    r = make_reaper(make_reaper_settings(redis_url=snapshots.url, max_sessions=CAP, idle_ttl_s=600))
    lc = r.lc
    evicted_after_the_snapshot(r)
    snapshots.restart()
    report = r.sweep(SweepKind.EXPIRED)
    assert report.rebuilt is not None
    assert report.rebuilt.ended == 1
    assert lc.stats().live == 0
    assert (r.document('s1') or {})['state'] == 'resumable'
    assert lc.restore('s1', 'api-a').snapshot == {'by': 'A'}


def test_turns_a_restart_lost_leave_no_checkpoint_covering_them(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, snapshots: SnapshotServer
) -> None:
    """A's s1 finished turn 1 and checkpointed it; Redis wrote its snapshot; s1 finished turns 2 and 3 (not yet
    checkpointed); Redis came back from the snapshot, its turn sequence at 1. The checkpoint of turn 1 must not
    let s1 be evicted: its turns 2 and 3 would be lost (before: the idle sweep evicted it at once, before and after
    the rebuild). No eviction but expiry runs before the rebuild, and the rebuild moves the turn sequence of every
    session it kept past anything known, so its owner is asked for a checkpoint first."""
    r = make_reaper(make_reaper_settings(redis_url=snapshots.url, max_sessions=CAP, idle_ttl_s=600))
    lc = r.lc
    a = lc.activate(lc.reserve('api-a'), 's1', ttl_seconds=3600)
    with lc.turn('s1', tenure=a.tenure):
        pass
    lc.checkpoint('s1', {'turns': 1}, tenure=a.tenure)
    lc.redis.save()
    for _ in range(2):
        with lc.turn('s1', tenure=a.tenure):
            pass
    snapshots.restart()
    r.clock.advance(seconds=601)
    dry = r.sweep(SweepKind.IDLE, dry_run=True)  # a dry run says what the sweep will do (before: 'evicted')
    assert (dry.ordered, dry.refused, [why for _, why in dry.kept]) == (0, 1, ['unverified'])
    r.sweep(SweepKind.IDLE)
    assert [(x.session_id, x.outcome, x.detail) for x in r.results] == [('s1', Outcome.KEPT, 'unverified')]
    held = lc.status('s1')
    assert held is not None
    verdict = explain(lc, held, r.document('s1') or {})  # `lifecycle status s1` says why it stays
    assert verdict.due is None
    assert 'the pool is not verified' in verdict.reasons[0], verdict
    assert [w for w in reaping_warnings(lc) if 'no session is evicted but by its hard deadline' in w]
    report = r.sweep(SweepKind.EXPIRED)
    assert report.rebuilt is not None
    assert (report.rebuilt.readmitted, report.rebuilt.moved_on) == (0, 1)  # counted, as the price of not knowing
    status = lc.status('s1')
    assert status is not None
    assert (status.owner, status.tenure, status.turn_seq) == ('api-a', a.tenure, 2)
    r.clock.advance(seconds=1)
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.ABORTED, 'not_checkpointed')  # A is asked
    assert (r.document('s1') or {})['state'] == 'live'
    lc.checkpoint('s1', {'turns': 3}, tenure=a.tenure)  # A's answer covers every turn it finished
    r.clock.advance(seconds=1)
    r.sweep(SweepKind.IDLE)
    assert r.results[-1].outcome is Outcome.EVICTED
    assert (r.document('s1') or {})['snapshot'] == {'turns': 3}


def test_a_session_kept_by_redis_that_leaves_while_the_rebuild_pages_is_not_taken_back(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    """The rebuild read s1 held by Redis (kept: only its turn sequence is to move on); its hard deadline passed and
    the expiry sweep ended it before the readmit ran. The readmit leaves it gone (before, it took back any session
    it found absent: s1 was live again, past its deadline, until the next expiry sweep)."""
    r = make_reaper(make_reaper_settings(max_sessions=CAP))
    lc = r.lc
    lc.activate(lc.reserve('api-a'), 's1', ttl_seconds=60)
    session = readmitted(r.document('s1') or {})
    r.clock.advance(seconds=61)
    assert r.evictor.evict('s1', ReapReason.EXPIRED, r.clock.now_ms()).outcome is Outcome.EXPIRED
    claims = r.evictor.claims
    assert lc.pool.run(claims.readmit([], [session], r.clock.now_ms())) == (0, 0)
    assert (lc.status('s1').state, lc.stats().live) == (SessionState.EXPIRED, 0)  # type: ignore[union-attr]
    # Read as missing (Redis did not hold it), it is taken back: that is what kept ones were given before.
    assert lc.pool.run(claims.readmit([session], [], r.clock.now_ms())) == (1, 0)
    assert lc.stats().live == 1


def test_a_checkpoint_on_a_copy_redis_brought_back_behind_mongodb_is_told_to_retry_not_fenced(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, snapshots: SnapshotServer
) -> None:
    """Redis wrote its snapshot at turn 0; s1 finished turn 1 and checkpointed it; Redis came back from the
    snapshot (turn 0). The owner's next checkpoint reads turn 0 from Redis, which MongoDB refuses as older than
    the checkpoint it holds: the owner is told to retry once the pool is rebuilt (PoolRecovering), and the retry
    lands (before: Fenced, as if another replica had taken its session, found by the model-based test)."""
    r = make_reaper(make_reaper_settings(redis_url=snapshots.url, max_sessions=CAP, idle_ttl_s=600))
    lc = r.lc
    a = lc.activate(lc.reserve('api-a'), 's1', ttl_seconds=3600)
    lc.redis.save()
    with lc.turn('s1', tenure=a.tenure):
        pass
    lc.checkpoint('s1', {'turns': 1}, tenure=a.tenure)
    snapshots.restart()
    with pytest.raises(PoolRecovering, match='s1'):
        lc.checkpoint('s1', {'turns': 1}, tenure=a.tenure)
    assert (r.document('s1') or {})['snapshot'] == {'turns': 1}
    assert r.sweep(SweepKind.EXPIRED).rebuilt is not None
    assert lc.checkpoint('s1', {'turns': 1}, tenure=a.tenure) == 2  # one past anything known
    assert (r.document('s1') or {})['checkpoint_seq'] == 2


def test_a_close_lost_with_a_deadline_entry_damaged_in_the_snapshot_stays_closed(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, snapshots: SnapshotServer
) -> None:
    """s1's deadline entry was lost (outside damage) before Redis wrote its snapshot; the app closed s1 (MongoDB
    recorded it); Redis came back from the snapshot, s1 live again without its deadline. The rebuild repairs
    the deadline first, then ends s1 again (before: it passed over s1 as damaged, and s1 stayed live, closed in
    MongoDB, until its profile's longest deadline; found by the model-based test)."""
    r = make_reaper(make_reaper_settings(redis_url=snapshots.url, max_sessions=CAP))
    lc = r.lc
    lc.activate(lc.reserve('api-a'), 's1', ttl_seconds=3600)
    lc.activate(lc.reserve('api-a'), 's2', ttl_seconds=60)
    lc.redis.zrem(lc.index.keys.deadline, 's1', 's2')
    lc.redis.save()
    r.sweep(SweepKind.RECONCILE)  # the damage is repaired in this history
    assert lc.close('s1')
    r.clock.advance(seconds=120)  # s2's hard deadline passes while Redis is down
    snapshots.restart()
    assert lc.redis.zscore(lc.index.keys.live, 's1') is not None
    report = r.sweep(SweepKind.EXPIRED)
    assert report.rebuilt is not None
    assert lc.redis.zscore(lc.index.keys.live, 's1') is None
    assert (r.document('s1') or {})['state'] == 'closed'
    assert lc.redis.zscore(lc.index.keys.live, 's2') is None  # ended by its hard deadline, not the longest one
    assert (r.document('s2') or {})['state'] == 'expired'
    assert (lc.stats().live, lc.stats().slots) == (0, 0)


def test_a_checkpoint_request_the_server_came_back_with_does_not_waive_the_lost_turns_checkpoint(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, snapshots: SnapshotServer
) -> None:
    """s1's owner was asked for a checkpoint of turn 1; Redis wrote its snapshot; the owner answered, and s1
    finished turn 2; Redis came back from the snapshot minutes later, the request with it. Its grace must not
    run from that old request: the rebuild drops it, the next idle sweep asks for turn 2, and s1 goes (waived)
    only a grace after that (before: the first idle sweep waived the checkpoint at once and evicted s1 with
    turn 1's checkpoint, nobody asked; found by a review)."""
    r = make_reaper(make_reaper_settings(redis_url=snapshots.url, max_sessions=CAP, idle_ttl_s=600,
                                         checkpoint_grace_s=300))  # fmt: skip
    lc = r.lc
    a = lc.activate(lc.reserve('api-a'), 's1', ttl_seconds=7200)
    lc.checkpoint('s1', {'turns': 0}, tenure=a.tenure)
    with lc.turn('s1', tenure=a.tenure):
        pass
    r.clock.advance(seconds=600)
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.ABORTED, 'not_checkpointed')  # asked at T
    lc.redis.save()
    r.clock.advance(seconds=5)
    lc.checkpoint('s1', {'turns': 1}, tenure=a.tenure)  # the answer
    with lc.turn('s1', tenure=a.tenure):
        pass  # turn 2
    r.clock.advance(seconds=400)  # past T + the grace
    snapshots.restart()
    report = r.sweep(SweepKind.EXPIRED)
    assert report.rebuilt is not None
    assert report.rebuilt.moved_on == 1
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.ABORTED, 'not_checkpointed')  # asked again
    assert (r.document('s1') or {})['state'] == 'live'
    r.clock.advance(seconds=300)
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.EVICTED, 'checkpoint_waived')


def test_an_earlier_life_whose_deadline_entry_is_also_lost_is_still_given_back_to_the_later_one(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, snapshots: SnapshotServer
) -> None:
    """Redis came back holding A's earlier life of s1 (B restored it since), and s1's deadline entry is lost too:
    the rebuild cannot read s1's status, but its readmit still replaces the earlier life's record with B's
    (before: a held session the rebuild could not read went to the readmit as kept, which only moved its turn
    sequence on: A's life stayed, B was Fenced for good; found by a review)."""
    r = make_reaper(make_reaper_settings(redis_url=snapshots.url, max_sessions=CAP, idle_ttl_s=600))
    lc = r.lc
    a = evicted_after_the_snapshot(r)
    b = lc.restore('s1', 'api-b').session
    snapshots.restart()
    lc.redis.zrem(lc.index.keys.deadline, 's1')
    assert r.sweep(SweepKind.EXPIRED).rebuilt is not None
    held = lc.status('s1')
    assert held is not None
    assert (held.owner, held.tenure) == ('api-b', b.tenure)
    assert lc.touch('s1', tenure=b.tenure)
    with pytest.raises(Fenced):
        lc.touch('s1', tenure=a.tenure)
    assert (lc.stats().live, lc.stats().slots) == (1, 1)


def snapshot_without(lc: Lifecycle, key: str, session_id: str) -> None:
    """Redis writes its snapshot while `session_id`'s entry of `key` (a hash field or a sorted-set member) is lost
    (outside damage); the entry is put back at once in this history."""
    if key == lc.index.keys.live:
        score = lc.redis.zscore(key, session_id)
        assert score is not None
        lc.redis.zrem(key, session_id)
        lc.redis.save()
        lc.redis.zadd(key, {session_id: score})
    else:
        held = lc.redis.hget(key, session_id)
        lc.redis.hdel(key, session_id)
        lc.redis.save()
        lc.redis.hset(key, session_id, held)


def test_a_close_lost_with_a_record_lost_in_the_snapshot_stays_closed(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, snapshots: SnapshotServer
) -> None:
    """The snapshot holds s1 live without its record; the app closed s1 (MongoDB recorded it); Redis came back.
    Reconcile's stand-in record (no owner, no tenure, created now) is of the life Redis held: the rebuild ends it
    again (before: it did not match MongoDB's life, and s1 stayed live until its hard deadline; found by a
    review)."""
    r = make_reaper(make_reaper_settings(redis_url=snapshots.url, max_sessions=CAP))
    lc = r.lc
    lc.activate(lc.reserve('api-a'), 's1', ttl_seconds=3600)
    snapshot_without(lc, lc.index.keys.meta_of('s1'), 's1')
    assert lc.close('s1')
    r.clock.advance(seconds=5)  # the stand-in's creation is the repair's time, not the activation's
    snapshots.restart()
    assert r.sweep(SweepKind.EXPIRED).rebuilt is not None
    assert lc.redis.zscore(lc.index.keys.live, 's1') is None
    assert ((r.document('s1') or {})['state'], lc.stats().slots) == ('closed', 0)


def test_a_record_whose_live_entry_the_snapshot_lost_is_seen_by_the_rebuild(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, snapshots: SnapshotServer
) -> None:
    """The snapshot holds A's record of s1 without its live entry. (1) s1 was evicted and restored by B since: the
    rebuild gives s1 to B's life; (2) s2 finished turns 1 (checkpointed) and 2 since: its turn sequence moves
    past the checkpoint, so the idle sweep asks before it evicts. The rebuild repairs the pool first, so that
    it sees them held (before: reconcile relinked A's record after the readmit, and B was Fenced for good; s2
    went with turn 1's checkpoint; found by a review)."""
    r = make_reaper(make_reaper_settings(redis_url=snapshots.url, max_sessions=CAP, idle_ttl_s=600))
    lc = r.lc
    a = lc.activate(lc.reserve('api-a'), 's1', ttl_seconds=3600)
    a2 = lc.activate(lc.reserve('api-a'), 's2', ttl_seconds=7200)
    lc.checkpoint('s1', {'by': 'A'}, tenure=a.tenure)
    lc.redis.zrem(lc.index.keys.live, 's2')
    snapshot_without(lc, lc.index.keys.live, 's1')
    lc.redis.zadd(lc.index.keys.live, {'s2': r.clock.now_ms()})
    with lc.turn('s2', tenure=a2.tenure):
        pass
    lc.checkpoint('s2', {'turns': 1}, tenure=a2.tenure)
    with lc.turn('s2', tenure=a2.tenure):
        pass
    r.clock.advance(seconds=601)
    assert r.evictor.evict('s1', ReapReason.IDLE, r.clock.now_ms()).outcome is Outcome.EVICTED
    b = lc.restore('s1', 'api-b').session
    snapshots.restart()
    assert r.sweep(SweepKind.EXPIRED).rebuilt is not None
    held = lc.status('s1')
    assert held is not None
    assert (held.owner, held.tenure) == ('api-b', b.tenure)
    assert lc.touch('s1', tenure=b.tenure)
    r.clock.advance(seconds=601)
    r.sweep(SweepKind.IDLE)
    assert [(x.session_id, x.outcome, x.detail) for x in r.results[-1:]] == [
        ('s2', Outcome.ABORTED, 'not_checkpointed')
    ]
    assert (r.document('s2') or {})['state'] == 'live'


def test_a_fence_hand_edited_out_of_range_in_mongodb_does_not_stop_the_rebuilt_pool(
    server: tuple[str, list[subprocess.Popen[bytes]]], make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    """Tokens stay below 1e14 (Lua prints numbers with 14 significant digits). A rebuild lifted the epoch above
    every fence MongoDB holds, a hand edit's 2**62 too: the epoch became '4.6116860184273879e+18', and every
    activation after it failed (INCR: not an integer); a text fence crashed the rebuild (int()), and an eviction
    batch holding its session (TypeError). Outside damage to one document must not stop the pool."""
    url, running = server
    r: Reaper = make_reaper(make_reaper_settings(redis_url=url, max_sessions=8, idle_ttl_s=600))
    lc = r.lc
    damage = {'huge': 2**62, 'near-limit': 10**14 - 1, 'text': 'a hand edit', 'decimal': Decimal128('5'),
              'array': [1, 2**62], 'nan': float('nan')}  # fmt: skip
    for name in ('s1', *damage):
        lc.activate(lc.reserve('api-1'), name, ttl_seconds=60 if name == 'text' else None)
        lc.checkpoint(name, {'at': 0})
    assert isinstance(lc.store, MongoSnapshotStore)
    for name, fence in damage.items():
        lc.store.sessions.update_one({'_id': name}, {'$set': {'fence': fence}})
    r.clock.advance(seconds=120)  # 'text' is past its deadline when the pool is rebuilt: ended there, or skipped

    restart_empty(url, running)
    rebuilt = r.sweep(SweepKind.EXPIRED).rebuilt
    assert rebuilt is not None
    assert (rebuilt.readmitted, rebuilt.expired) == (6, 1)  # s1 and five damaged; 'text' past its deadline

    epoch = redis.Redis.from_url(url, decode_responses=True).get(lc.index.keys.epoch)
    assert isinstance(epoch, str)
    assert epoch.isdigit(), epoch
    assert int(epoch) < 10**13
    lc.activate(lc.reserve('api-1'), 's8')  # a token from the epoch
    r.clock.advance(seconds=600)
    lc.checkpoint('s1', {'at': 1})
    for name in damage:
        if name != 'text':
            lc.checkpoint(name, {'at': 1})
    r.sweep(SweepKind.IDLE)  # one batch: s1 and the damaged ones
    outcomes = {x.session_id: (x.outcome, x.detail) for x in r.results}
    assert outcomes['s1'][0] is Outcome.EVICTED, outcomes
