"""The eviction pipeline and the sweeps on real Redis and MongoDB (SecantusDB), evictions run inline."""

from __future__ import annotations

import time
from typing import Any

import pymongo
import pytest

from lifecycle import CapacityExceeded, Lifecycle, SessionReaping, SessionState
from lifecycle.models import NoticeKind, ReapReason
from lifecycle.policy import Order
from lifecycle.pool.claims import Claim, ClaimIndex, Step
from lifecycle.reaper.eviction import Outcome, claim_record
from lifecycle.reaper.sweeps import SweepKind
from lifecycle.sandboxes import SandboxError
from lifecycle.stores import Mark
from tests.conftest import SettingsFactory
from tests.integration.conftest import ReaperFactory
from tests.integration.reaper import FAILURES, Reaper, fail


@pytest.fixture(params=['mongo', 'memory'])
def store_kind(request: pytest.FixtureRequest) -> str:
    """This suite runs over the MongoDB-wire store and its in-memory twin (see conftest.store_kind)."""
    return str(request.param)


@pytest.fixture
def reaper(make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory) -> Reaper:
    return make_reaper(
        make_reaper_settings(idle_ttl_s=600, max_sessions=10, warn_before_s=120, min_idle_s=60, mongo_timeout_ms=1_000)
    )


def open_session(r: Reaper, session_id: str, *, owner: str = 'api-1', checkpoint: bool = True, ttl: int = 900) -> None:
    r.lc.activate(r.lc.reserve(owner), session_id, ttl_seconds=ttl)
    if checkpoint:
        r.lc.checkpoint(session_id, {'history': [session_id]}, [{'id': f'{session_id}-m1', 'text': 'hello'}])


def kinds(r: Reaper, owner: str = 'api-1') -> list[tuple[str, str]]:
    return [(n.kind.value, n.session_id) for n in r.lc.notices(owner)]


def test_idle_sessions_become_resumable_and_restore_with_a_reset_sandbox(reaper: Reaper) -> None:
    for i in range(3):
        open_session(reaper, f's{i}')
    reaper.clock.advance(seconds=599)
    assert reaper.sweep(SweepKind.IDLE).orders == []
    reaper.clock.advance(seconds=1)
    report = reaper.sweep(SweepKind.IDLE)
    assert sorted(o.session_id for o in report.orders) == ['s0', 's1', 's2']
    assert [r.outcome for r in reaper.results] == [Outcome.EVICTED] * 3
    stats = reaper.lc.stats()
    assert (stats.live, stats.reaping, stats.slots) == (0, 0, 0)
    for i in range(3):
        info = reaper.lc.status(f's{i}')
        assert info is not None
        assert info.state is SessionState.RESUMABLE
        document = reaper.document(f's{i}')
        assert document is not None
        assert (document['state'], document['reason']) == ('resumable', 'idle')
    assert sorted(kinds(reaper)) == [('evicted', 's0'), ('evicted', 's1'), ('evicted', 's2')]

    restored = reaper.lc.restore('s1', 'api-2')
    assert restored.sandbox_reset is True
    assert restored.snapshot == {'history': ['s1']}
    assert restored.messages == [{'id': 's1-m1', 'text': 'hello'}]
    assert (restored.session.state, restored.session.owner) == (SessionState.LIVE, 'api-2')
    assert reaper.lc.status('s1').state is SessionState.LIVE  # type: ignore[union-attr]
    assert reaper.document('s1')['state'] == 'live'  # type: ignore[index]
    assert reaper.lc.stats().live == 1
    with reaper.lc.turn('s1') as turn:
        pass
    assert turn.finished_seq == 1


@pytest.mark.parametrize('failure', list(FAILURES))
@pytest.mark.parametrize('store_kind', ['mongo'])  # MongoDB's own fail points or collections
def test_a_failed_eviction_write_evicts_nothing_and_the_next_clean_sweep_does(
    reaper: Reaper, mongo_admin: pymongo.MongoClient[dict[str, Any]], failure: str
) -> None:
    """A refusal gives the sessions straight back. A failure that may have applied (a write-concern error, a lost
    connection), with MongoDB refusing the fence too, leaves the claims to recovery: never live in Redis while
    MongoDB may say resumable. Either way, once MongoDB is back, every session is evicted once."""
    for i in range(3):
        open_session(reaper, f's{i}')
    reaper.clock.advance(seconds=600)
    fail(mongo_admin, 'update', **FAILURES[failure])
    reaper.sweep(SweepKind.IDLE)
    refused = failure == 'error'
    outcome = Outcome.ABORTED if refused else Outcome.SKIPPED
    assert [(r.outcome, r.detail) for r in reaper.results] == [(outcome, 'persistence_error')] * 3
    stats = reaper.lc.stats()
    assert (stats.live, stats.reaping, stats.slots) == (3, 0 if refused else 3, 3)
    for i in range(3):
        state = reaper.lc.status(f's{i}').state  # type: ignore[union-attr]
        assert state is (SessionState.LIVE if refused else SessionState.REAPING)
    assert kinds(reaper) == []
    counters = reaper.lc.redis.hgetall(reaper.lc.index.keys.counters)
    assert counters[f'{outcome}:idle' + (':persistence_error' if refused else '')] == '3'

    mongo_admin.admin.command('configureFailPoint', 'failCommand', mode='off')
    reaper.results.clear()
    # The next sweep (at a later instant: what one keeps, the next one looks at again), past the claims' lease.
    reaper.clock.advance(seconds=1 if refused else reaper.lc.settings.claim_lease_s + 1)
    report = reaper.sweep(SweepKind.IDLE)
    # The fence went in unconfirmed (write-concern) or not at all: MongoDB says live, so recovery rolls back.
    assert [r.outcome for r in report.recovered] == ([] if refused else [Outcome.ROLLED_BACK] * 3)
    assert [r.outcome for r in reaper.results] == [Outcome.EVICTED] * 3
    assert reaper.lc.stats().live == 0
    for i in range(3):
        assert reaper.document(f's{i}')['state'] == 'resumable'  # type: ignore[index]


@pytest.mark.parametrize('store_kind', ['mongo'])  # MongoDB's own fail points
def test_an_eviction_write_that_lands_after_its_timeout_changes_nothing(
    reaper: Reaper, mongo_admin: pymongo.MongoClient[dict[str, Any]]
) -> None:
    """Issue 18, hole 2: the write outlives its timeout (1 s), the sweep gives the sessions back to their app, then
    the server runs the write. It must find them fenced off: never live in Redis and resumable in MongoDB."""
    for i in range(3):
        open_session(reaper, f's{i}')
    reaper.clock.advance(seconds=600)
    fail(mongo_admin, 'update', times=1, blockConnection=True, blockTimeMS=2_500)
    reaper.sweep(SweepKind.IDLE)
    assert [(r.outcome, r.detail) for r in reaper.results] == [(Outcome.ABORTED, 'persistence_error')] * 3
    time.sleep(3)  # the blocked write has run by now
    stats = reaper.lc.stats()
    assert (stats.live, stats.reaping, stats.slots) == (3, 0, 3)
    for i in range(3):
        assert reaper.lc.status(f's{i}').state is SessionState.LIVE  # type: ignore[union-attr]
        assert reaper.document(f's{i}')['state'] == 'live'  # type: ignore[index]

    reaper.results.clear()
    reaper.clock.advance(seconds=1)
    reaper.sweep(SweepKind.IDLE)
    assert [r.outcome for r in reaper.results] == [Outcome.EVICTED] * 3
    assert all(reaper.document(f's{i}')['state'] == 'resumable' for i in range(3))  # type: ignore[index]


def test_an_unsaved_turn_keeps_the_session_live_and_asks_its_owner_to_checkpoint(reaper: Reaper) -> None:
    open_session(reaper, 's1')
    with reaper.lc.turn('s1'):
        pass
    reaper.clock.advance(seconds=600)
    reaper.sweep(SweepKind.IDLE)
    assert [(r.outcome, r.detail) for r in reaper.results] == [(Outcome.ABORTED, 'not_checkpointed')]
    assert reaper.lc.status('s1').state is SessionState.LIVE  # type: ignore[union-attr]
    assert kinds(reaper) == [('checkpoint_requested', 's1')]
    assert reaper.lc.checkpoint('s1', {'history': ['after turn 1']}) == 1
    reaper.clock.advance(seconds=1)  # the next sweep: what one keeps, the next one (at a later instant) looks at again
    reaper.sweep(SweepKind.IDLE)
    assert reaper.results[-1].outcome is Outcome.EVICTED


def test_without_persistence_idle_and_lru_reaping_are_skipped_but_expiry_is_not(
    make_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_settings(idle_ttl_s=60, max_live=1))
    open_session(r, 's1', checkpoint=False, ttl=120)
    open_session(r, 's2', checkpoint=False, ttl=120)
    r.clock.advance(seconds=61)
    assert r.sweep(SweepKind.IDLE).skipped == 'persistence is off'
    assert r.sweep(SweepKind.LRU).skipped == 'persistence is off'
    assert r.lc.stats().live == 2
    r.clock.advance(seconds=60)
    r.sweep(SweepKind.EXPIRED)
    assert [res.outcome for res in r.results] == [Outcome.EXPIRED] * 2
    assert r.lc.stats().live == 0


@pytest.mark.parametrize('store_kind', ['mongo'])  # MongoDB's own fail points or collections
def test_a_busy_session_expires_at_its_hard_deadline_even_when_mongodb_fails(
    reaper: Reaper, mongo_admin: pymongo.MongoClient[dict[str, Any]]
) -> None:
    open_session(reaper, 'busy', ttl=60)
    open_session(reaper, 'unsaved', ttl=60)
    reaper.lc.pool.run(reaper.lc.index.begin_turn('busy', 'turn-1', reaper.clock.now_ms()))
    reaper.clock.advance(seconds=59)
    reaper.sweep(SweepKind.EXPIRED)
    assert reaper.results == []
    reaper.clock.advance(seconds=1)
    reaper.lc.pool.run(reaper.lc.index.renew_turn('busy', 'turn-1', reaper.clock.now_ms()))
    fail(mongo_admin, 'update', times=1, errorCode=8)  # the best-effort write of one of them fails
    reaper.sweep(SweepKind.EXPIRED)
    assert sorted((r.session_id, r.outcome) for r in reaper.results) == [
        ('busy', Outcome.EXPIRED),
        ('unsaved', Outcome.EXPIRED),
    ]
    assert reaper.lc.stats().slots == 0
    assert sorted(kinds(reaper)) == [('expired', 'busy'), ('expired', 'unsaved')]
    states = sorted(str((reaper.document(s) or {}).get('state')) for s in ('busy', 'unsaved'))
    assert 'expired' in states


def test_sessions_of_a_lost_replica_are_evicted_once_their_busy_lease_is_out(reaper: Reaper) -> None:
    for owner in ('api-1', 'api-2'):
        reaper.lc.heartbeat(owner)
        open_session(reaper, f'{owner}-a', owner=owner)
        open_session(reaper, f'{owner}-b', owner=owner)
    reaper.lc.pool.run(reaper.lc.index.begin_turn('api-1-b', 'mid-turn', reaper.clock.now_ms()))
    reaper.clock.advance(seconds=reaper.lc.settings.replica_ttl_s)
    reaper.lc.heartbeat('api-2')  # api-1 died
    reaper.sweep(SweepKind.OWNER_LOST)
    assert {(r.session_id, r.outcome) for r in reaper.results} == {
        ('api-1-a', Outcome.EVICTED),
        ('api-1-b', Outcome.KEPT),
    }
    assert reaper.document('api-1-a')['reason'] == 'owner_lost'  # type: ignore[index]
    reaper.clock.advance(seconds=reaper.lc.settings.busy_lease_s)
    reaper.lc.heartbeat('api-2')
    reaper.sweep(SweepKind.OWNER_LOST)
    assert reaper.results[-1].session_id == 'api-1-b'
    assert reaper.results[-1].outcome is Outcome.EVICTED
    reaper.sweep(SweepKind.RECONCILE)
    assert reaper.lc.redis.zscore(reaper.lc.index.keys.replicas, 'api-1') is None  # it owns nothing: forgotten
    assert reaper.lc.stats().live == 2


def test_make_room_evicts_the_least_recent_idle_session_to_admit(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, min_idle_s=60))
    open_session(r, 'oldest')
    r.clock.advance(seconds=10)
    open_session(r, 'older')
    r.clock.advance(seconds=100)
    open_session(r, 'recent')
    r.lc.pool.run(r.lc.index.begin_turn('oldest', 't', r.clock.now_ms()))  # busy: never taken for room
    with pytest.raises(CapacityExceeded):
        r.lc.reserve('api-9')
    admitted = r.lc.reserve('api-9', make_room=True)
    assert admitted.owner == 'api-9'
    assert r.lc.status('older').state is SessionState.RESUMABLE  # type: ignore[union-attr]
    assert r.document('older')['reason'] == 'make_room'  # type: ignore[index]
    assert r.lc.status('oldest').state is SessionState.LIVE  # type: ignore[union-attr]
    with pytest.raises(CapacityExceeded):  # left: one busy, one idle for less than min_idle_s
        r.lc.reserve('api-9', make_room=True)
    assert r.lc.stats().slots == 3


def test_the_lru_sweep_evicts_the_least_recently_active_non_busy_sessions(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_live=3))
    for i in range(6):
        open_session(r, f's{i}')
        r.clock.advance(seconds=1)
    r.lc.pool.run(r.lc.index.begin_turn('s0', 't', r.clock.now_ms()))
    r.lc.touch('s1')  # now the most recent
    r.sweep(SweepKind.LRU)
    assert [(res.session_id, res.outcome) for res in r.results] == [
        ('s2', Outcome.EVICTED),
        ('s3', Outcome.EVICTED),
        ('s4', Outcome.EVICTED),
    ]
    assert r.lc.stats().live == 3
    r.sweep(SweepKind.LRU)
    assert len(r.results) == 3


def test_owners_are_warned_once_before_the_idle_deadline(reaper: Reaper) -> None:
    open_session(reaper, 's1')
    reaper.clock.advance(seconds=600 - 121)
    assert reaper.sweep(SweepKind.WARNINGS).notices == 0
    reaper.clock.advance(seconds=1)
    assert reaper.sweep(SweepKind.WARNINGS).notices == 1
    reaper.clock.advance(seconds=30)
    assert reaper.sweep(SweepKind.WARNINGS).notices == 0
    reaper.lc.touch('s1')  # activity: a new idle period, a new warning in due time
    reaper.clock.advance(seconds=600 - 120)
    assert reaper.sweep(SweepKind.WARNINGS).notices == 1
    notices = list(reaper.lc.notices('api-1'))
    assert [(n.kind, n.session_id) for n in notices] == [(NoticeKind.WARNING, 's1')] * 2
    assert list(reaper.lc.notices('api-1', after=notices[0].id)) == notices[1:]


class FlakyDriver:
    """Fails its first release with `error` (a SandboxError, or what a buggy driver raises)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.released: list[str] = []
        self.failures = 1
        self.error = error or SandboxError('the sandbox API is down')

    def release(self, session_id: str, reason: str) -> None:
        if self.failures:
            self.failures -= 1
            raise self.error
        self.released.append(session_id)

    def leases(self) -> list[Any]:
        return []


def test_a_failed_sandbox_release_does_not_hold_the_slot_and_is_retried(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    driver = FlakyDriver()
    r = make_reaper(make_reaper_settings(idle_ttl_s=60), driver=driver)
    open_session(r, 's1')
    r.clock.advance(seconds=60)
    r.sweep(SweepKind.IDLE)
    assert r.results[0].outcome is Outcome.EVICTED
    assert r.lc.stats().slots == 0
    assert driver.released == []
    report = r.sweep(SweepKind.EXPIRED)
    assert report.released_sandboxes == ['s1']
    assert driver.released == ['s1']
    assert r.lc.redis.zcard(r.lc.index.keys.orphans) == 0


class EngineDown:
    """A driver whose engine is down: it can neither release nor list."""

    def release(self, session_id: str, reason: str) -> None:
        raise SandboxError(f'release of {session_id!r} failed: the engine is down')

    def leases(self) -> list[Any]:
        raise SandboxError('listing the sandboxes failed: the engine is down')


def test_an_expiry_sweep_whose_driver_cannot_list_still_expires_sessions_and_keeps_their_releases_for_later(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(), driver=EngineDown())
    open_session(r, 's1', ttl=60)
    r.clock.advance(seconds=61)
    report = r.sweep(SweepKind.EXPIRED)
    assert report.ran
    assert [(x.session_id, x.outcome) for x in r.results] == [('s1', Outcome.EXPIRED)]
    assert report.released_sandboxes == []
    assert r.lc.redis.zrange(r.lc.index.keys.orphans, 0, -1) == ['s1']  # retried at the next expiry sweep
    assert r.lc.stats().live == 0


def test_a_driver_failing_with_any_exception_never_stops_an_eviction_after_its_durable_write(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    driver = FlakyDriver(ValueError('invalid literal for int() with base 10'))  # a bug, an SDK's own exception
    r = make_reaper(make_reaper_settings(idle_ttl_s=60), driver=driver)
    open_session(r, 's1')
    r.clock.advance(seconds=60)
    r.sweep(SweepKind.IDLE)
    assert [(x.session_id, x.outcome) for x in r.results] == [('s1', Outcome.EVICTED)]
    assert (r.lc.stats().slots, r.lc.stats().reaping) == (0, 0)
    assert r.sweep(SweepKind.EXPIRED).released_sandboxes == ['s1']  # retried from the orphan list
    assert driver.released == ['s1']


def test_recovery_completes_a_durable_eviction_and_rolls_back_one_that_never_wrote(reaper: Reaper) -> None:
    open_session(reaper, 'durable')
    open_session(reaper, 'unwritten')
    reaper.clock.advance(seconds=600)
    claims = ClaimIndex(reaper.lc.settings, reaper.lc.index.keys)
    taken = {}
    for session_id in ('durable', 'unwritten'):
        claimed = reaper.lc.pool.run(claims.claim(session_id, ReapReason.IDLE, reaper.clock.now_ms(), 2**50))
        assert isinstance(claimed, Claim)
        taken[session_id] = claimed
    assert reaper.store is not None
    durable = taken['durable']
    reaper.store.mark_resumable([Mark(claim_record(durable), durable.token, ReapReason.IDLE)])
    # ... and both workers die here.
    with pytest.raises(SessionReaping), reaper.lc.turn('unwritten'):
        pass
    assert reaper.sweep(SweepKind.EXPIRED).recovered == []  # claims still within their lease
    reaper.clock.advance(seconds=reaper.lc.settings.claim_lease_s)
    recovered = reaper.sweep(SweepKind.EXPIRED).recovered
    assert sorted((r.session_id, r.outcome) for r in recovered) == [
        ('durable', Outcome.EVICTED),
        ('unwritten', Outcome.ROLLED_BACK),
    ]
    assert reaper.lc.stats().reaping == 0
    assert reaper.lc.status('durable').state is SessionState.RESUMABLE  # type: ignore[union-attr]
    assert reaper.lc.status('unwritten').state is SessionState.LIVE  # type: ignore[union-attr]
    stale = taken['unwritten']
    assert reaper.store.mark_resumable([Mark(claim_record(stale), stale.token, ReapReason.IDLE)]) == ['fenced']


def test_one_sweep_evicts_every_due_session_even_when_their_scores_tie(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(idle_ttl_s=60, sweep_batch_size=20, require_checkpoint=False))
    for i in range(70):  # one fixed clock: every session's last activity is the same millisecond
        r.lc.activate(r.lc.reserve('api-1'), f's{i}')
    r.clock.advance(seconds=60)
    report = r.sweep(SweepKind.IDLE)  # evictions run inline, removing sessions while the sweep pages on
    assert report.ordered == 70
    assert [res.outcome for res in r.results] == [Outcome.EVICTED] * 70
    assert r.lc.stats().live == 0


def test_one_batch_gives_every_session_its_own_outcome(reaper: Reaper) -> None:
    for session_id in ('due', 'also-due', 'busy', 'touched', 'closed'):
        open_session(reaper, session_id)
    open_session(reaper, 'unsaved', checkpoint=False)
    with reaper.lc.turn('unsaved'):  # a finished turn and no checkpoint covering it
        pass
    reaper.clock.advance(seconds=600)
    bound = reaper.clock.now_ms() - 600_000
    turn = reaper.lc.turn('busy')
    turn.__enter__()
    reaper.lc.touch('touched')
    reaper.lc.close('closed')
    names = ['due', 'busy', 'unsaved', 'touched', 'closed', 'also-due', 'due']  # 'due' twice: a duplicate order
    results = reaper.evictor.evict_many([Order(name, ReapReason.IDLE, idle_cutoff_ms=bound) for name in names])
    turn.__exit__(None, None, None)
    assert [(r.session_id, r.outcome, r.detail) for r in results] == [
        ('due', Outcome.EVICTED, ''),
        ('busy', Outcome.KEPT, 'busy'),
        ('unsaved', Outcome.ABORTED, 'not_checkpointed'),
        ('touched', Outcome.KEPT, 'not_due'),
        ('closed', Outcome.KEPT, 'not_live'),
        ('also-due', Outcome.EVICTED, ''),
        ('due', Outcome.KEPT, 'claimed'),
    ]
    assert reaper.lc.redis.hgetall(reaper.lc.index.keys.counters) == {
        'evicted:idle': '2',
        'aborted:idle:not_checkpointed': '1',
    }
    assert {r.session_id for r in results if r.outcome is Outcome.EVICTED} == {
        name
        for name in names
        if reaper.lc.status(name).state is SessionState.RESUMABLE  # type: ignore[union-attr]
    }
    assert ('checkpoint_requested', 'unsaved') in kinds(reaper)
    stats = reaper.lc.stats()
    assert (stats.live, stats.reaping, stats.slots) == (3, 0, 3)


class SlowDriver:
    """Releases take `seconds` each; records when each began and which sessions the pool held then."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: dict[str, float] = {}
        self.pool_then: dict[str, set[str]] = {}
        self.lc: Lifecycle | None = None

    def release(self, session_id: str, reason: str) -> None:
        self.started[session_id] = time.monotonic()
        if self.lc is not None:
            self.pool_then[session_id] = {str(m) for m in self.lc.redis.zrange(self.lc.index.keys.live, 0, -1)}
        time.sleep(self.seconds)

    def leases(self) -> list[Any]:
        return []


def test_slow_sandbox_releases_each_start_within_a_third_of_a_lease_of_confirming_the_claim(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    driver = SlowDriver(0.2)
    r = make_reaper(make_reaper_settings(idle_ttl_s=60, claim_lease_s=1, require_checkpoint=False), driver=driver)
    driver.lc = r.lc
    names = [f's{i}' for i in range(5)]
    for name in names:
        r.lc.activate(r.lc.reserve('api-1'), name)
    r.clock.advance(seconds=60)
    confirmed: dict[str, float] = {}
    run_each = r.lc.pool.run_each

    def watching(calls: Any) -> Any:
        replies = run_each(calls)
        at = time.monotonic()
        for call, step in zip(calls, replies, strict=True):
            if call.script == 'extend_claim' and step is Step.DONE:
                confirmed[call.args[0]] = at
        return replies

    r.lc.pool.run_each = watching  # type: ignore[method-assign]
    results = r.evictor.evict_many([Order(name, ReapReason.IDLE, idle_cutoff_ms=r.clock.now_ms()) for name in names])
    assert [res.outcome for res in results] == [Outcome.EVICTED] * 5
    assert sorted(driver.started) == names
    # 5 releases of 0.2 s outlast a third of the 1 s lease: the rest were confirmed again before theirs.
    assert len(set(confirmed.values())) >= 2
    for name in names:
        assert 0 <= driver.started[name] - confirmed[name] <= 1 / 3
    # Each window's sessions left the pool before the next window was confirmed and released.
    assert len(set(confirmed.values())) >= 2
    for name in names:
        earlier = {n for n in names if confirmed[n] < confirmed[name]}
        assert not earlier & driver.pool_then[name], (name, earlier, driver.pool_then[name])


def test_a_batch_whose_releases_run_long_defers_the_rest_to_the_orphan_list(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    driver = SlowDriver(0.4)
    settings = make_reaper_settings(idle_ttl_s=60, task_time_limit_s=2, require_checkpoint=False)
    r = make_reaper(settings, driver=driver)
    names = [f's{i}' for i in range(6)]
    for name in names:
        r.lc.activate(r.lc.reserve('api-1'), name)
    r.clock.advance(seconds=60)
    results = r.evictor.evict_many([Order(name, ReapReason.IDLE, idle_cutoff_ms=r.clock.now_ms()) for name in names])
    # Every session is durable and out of the pool, slot back, though not every sandbox was released yet.
    assert [res.outcome for res in results] == [Outcome.EVICTED] * 6
    assert r.lc.stats().slots == 0
    released = set(driver.started)
    orphans = set(r.lc.redis.zrange(r.lc.index.keys.orphans, 0, -1))
    assert released  # half the 2 s limit: about 3 releases of 0.4 s, the rest deferred
    assert orphans
    assert released | orphans == set(names)
    assert not released & orphans
    report = r.sweep(SweepKind.EXPIRED)  # the expiry sweep releases what the batch deferred
    assert sorted(report.released_sandboxes) == sorted(orphans)
    assert set(driver.started) == set(names)


@pytest.mark.parametrize('store_kind', ['mongo'])  # MongoDB's own fail points or collections
def test_expiry_stops_trying_mongodb_after_three_failures_in_a_row(
    reaper: Reaper, mongo_admin: pymongo.MongoClient[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f's{i}' for i in range(6)]
    for name in names:
        open_session(reaper, name, ttl=60)
    reaper.clock.advance(seconds=60)
    assert reaper.store is not None
    tries: list[str] = []
    end = reaper.store.end

    def counted(record: Any, *args: Any) -> None:
        tries.append(record.session_id)
        end(record, *args)

    monkeypatch.setattr(reaper.store, 'end', counted)
    fail(mongo_admin, 'update', errorCode=8)  # MongoDB refuses every write
    results = reaper.evictor.evict_many([Order(name, ReapReason.EXPIRED) for name in names])
    assert [r.outcome for r in results] == [Outcome.EXPIRED] * 6  # the hard deadline holds regardless
    assert len(tries) == 3
    assert reaper.lc.stats().live == 0
