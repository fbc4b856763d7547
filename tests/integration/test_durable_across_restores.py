"""Durable before evicted holds across restores and across turns that end while an eviction is in flight."""

from __future__ import annotations

from typing import Any

import pytest

from lifecycle import SessionExists, SessionNotLive, SessionReaping, SessionState
from lifecycle.models import ReapReason
from lifecycle.policy import Order
from lifecycle.reaper.eviction import Outcome
from lifecycle.reaper.sweeps import SweepKind
from tests.conftest import SettingsFactory
from tests.integration.conftest import ReaperFactory
from tests.integration.reaper import Reaper


@pytest.fixture(params=['mongo', 'memory'])
def store_kind(request: pytest.FixtureRequest) -> str:
    """This suite runs over the MongoDB-wire store and its in-memory twin (see conftest.store_kind)."""
    return str(request.param)


@pytest.fixture
def reaper(make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory) -> Reaper:
    return make_reaper(make_reaper_settings(idle_ttl_s=600, busy_lease_s=30, claim_lease_s=60, max_sessions=10))


def turns(r: Reaper, session_id: str, n: int) -> int:
    seq = 0
    for _ in range(n):
        with r.lc.turn(session_id) as turn:
            pass
        assert turn.finished_seq is not None
        seq = turn.finished_seq
    return seq


def test_a_turn_after_a_restore_is_not_covered_by_the_checkpoint_from_before_it(reaper: Reaper) -> None:
    lc = reaper.lc
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=3600)
    assert turns(reaper, 's1', 3) == 3
    assert lc.checkpoint('s1', {'at': 3}) == 3
    reaper.clock.advance(seconds=600)
    reaper.sweep(SweepKind.IDLE)
    assert reaper.results[-1].outcome is Outcome.EVICTED

    restored = lc.restore('s1', 'api-2')
    assert restored.checkpoint_seq == 3
    assert restored.session.turn_seq == 3  # the sequence goes on from where it was, never back to 0
    assert turns(reaper, 's1', 1) == 4
    reaper.clock.advance(seconds=600)
    reaper.sweep(SweepKind.IDLE)
    assert (reaper.results[-1].outcome, reaper.results[-1].detail) == (Outcome.ABORTED, 'not_checkpointed')
    assert lc.status('s1').state is SessionState.LIVE  # type: ignore[union-attr]
    assert ('checkpoint_requested', 's1') in [(n.kind.value, n.session_id) for n in lc.notices('api-2')]

    assert lc.checkpoint('s1', {'at': 4}) == 4
    reaper.clock.advance(seconds=1)  # the next sweep: what one keeps, the next one (at a later instant) looks at again
    reaper.sweep(SweepKind.IDLE)
    assert reaper.results[-1].outcome is Outcome.EVICTED
    document = reaper.document('s1')
    assert document is not None
    assert (document['state'], document['snapshot'], document['checkpoint_seq']) == ('resumable', {'at': 4}, 4)
    assert lc.restore('s1', 'api-3').session.turn_seq == 4


def test_a_turn_that_ends_while_its_session_is_claimed_stops_the_eviction(reaper: Reaper) -> None:
    """A turn whose busy lease lapsed (its replica lost Redis for a while) can end after a worker claimed
    and durably marked the session: that finished turn is not in the checkpoint, so the eviction must not
    complete, and MongoDB must not keep saying resumable."""
    lc = reaper.lc
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=3600)
    assert lc.checkpoint('s1', {'at': 0}) == 0
    with lc.turn('s1') as turn:
        reaper.clock.advance(seconds=600)  # idle, and the busy lease (30 s) long lapsed
        evictor = reaper.evictor
        claims = lc.pool.run_many([evictor.claims.claim('s1', ReapReason.IDLE, lc.now_ms(), lc.now_ms() - 600_000)])
        claim = claims[0]
        assert not isinstance(claim, str)
        assert evictor._persist({0: claim})[0] == {}  # the durable write landed (covers turn 0)
    assert turn.finished_seq == 1  # the turn's end is recorded even under the claim ...
    completed = evictor._complete({0: claim})
    assert (completed[0].outcome, completed[0].detail) == (Outcome.ABORTED, 'turn_finished')  # ... which it undoes
    info = lc.status('s1')
    assert info is not None
    assert (info.state, info.turn_seq) == (SessionState.LIVE, 1)
    document = reaper.document('s1')
    assert document is not None
    assert document['state'] == 'live'
    assert lc.stats().reaping == 0


def test_recovery_does_not_complete_an_eviction_a_later_turn_outdated(reaper: Reaper) -> None:
    lc = reaper.lc
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=3600)
    assert lc.checkpoint('s1', {'at': 0}) == 0
    with lc.turn('s1'):
        reaper.clock.advance(seconds=600)
        evictor = reaper.evictor
        claim = lc.pool.run_many([evictor.claims.claim('s1', ReapReason.IDLE, lc.now_ms(), lc.now_ms() - 600_000)])[0]
        assert not isinstance(claim, str)
        assert evictor._persist({0: claim})[0] == {}
    # The worker dies here; its claim's lease runs out and the next sweep recovers it.
    reaper.clock.advance(seconds=61)
    report = reaper.sweep(SweepKind.IDLE)
    assert [(r.outcome, r.detail) for r in report.recovered] == [(Outcome.ROLLED_BACK, 'turn_finished')]
    assert lc.status('s1').state is SessionState.LIVE  # type: ignore[union-attr]
    assert reaper.document('s1')['state'] == 'live'  # type: ignore[index]
    evicted = reaper.evictor.evict_many([Order('s1', ReapReason.IDLE, idle_cutoff_ms=lc.now_ms())])
    assert (evicted[0].outcome, evicted[0].detail) == (Outcome.ABORTED, 'not_checkpointed')


def test_checkpointing_a_session_that_is_not_live_writes_nothing(reaper: Reaper) -> None:
    with pytest.raises(SessionNotLive):
        reaper.lc.checkpoint('never-existed', {'v': 1}, [{'id': 'm1'}])
    assert reaper.document('never-existed') is None
    assert reaper.store is not None
    assert reaper.store.messages('never-existed') == []


class TurnEndingDriver:
    """A sandbox driver whose release lets a lapsed turn end right then (the worst moment for it)."""

    def __init__(self) -> None:
        self.end: list[tuple[Any, str, str]] = []
        self.released: list[str] = []

    def release(self, session_id: str, reason: str) -> None:
        self.released.append(session_id)
        for lc, sid, token in self.end:
            lc.pool.run(lc.index.end_turn(sid, token, lc.now_ms()))
        self.end.clear()

    def leases(self) -> list[Any]:
        return []


def lapsed_turn(r: Reaper, session_id: str) -> str:
    """A turn that began, then lost its busy lease (its replica could not reach Redis to renew it)."""
    r.lc.pool.run(r.lc.index.begin_turn(session_id, 'slow-turn', r.lc.now_ms()))
    r.clock.advance(seconds=600)
    return 'slow-turn'


def test_a_turn_that_ends_during_the_sandbox_release_keeps_the_session_and_its_owner_is_told(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    driver = TurnEndingDriver()
    r = make_reaper(make_reaper_settings(idle_ttl_s=600, busy_lease_s=30), driver=driver)
    r.lc.activate(r.lc.reserve('api-1'), 's1', ttl_seconds=3600)
    r.lc.checkpoint('s1', {'turns': 0})
    driver.end.append((r.lc, 's1', lapsed_turn(r, 's1')))
    r.sweep(SweepKind.IDLE)
    assert driver.released == ['s1']
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.ABORTED, 'turn_finished')
    info = r.lc.status('s1')
    assert info is not None
    assert (info.state, info.turn_seq) == (SessionState.LIVE, 1)
    assert r.document('s1')['state'] == 'live'  # type: ignore[index]
    assert [(n.kind.value, n.session_id) for n in r.lc.notices('api-1')] == [('sandbox_reset', 's1')]


def test_recovery_of_a_claim_written_before_claims_kept_the_turn_sequence_still_sees_a_later_turn(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    driver = TurnEndingDriver()
    r = make_reaper(make_reaper_settings(idle_ttl_s=600, busy_lease_s=30, claim_lease_s=60), driver=driver)
    lc, evictor = r.lc, r.evictor
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=3600)
    lc.checkpoint('s1', {'turns': 0})
    token = lapsed_turn(r, 's1')
    claim = lc.pool.run(evictor.claims.claim('s1', ReapReason.IDLE, lc.now_ms(), lc.now_ms()))
    assert not isinstance(claim, str)
    assert evictor._persist({0: claim})[0] == {}
    lc.redis.hset(lc.index.keys.claims, 's1', f'{claim.token}|idle')  # the previous layout: no sequence
    r.clock.advance(seconds=61)  # that worker died; its claim's lease ran out
    driver.end.append((lc, 's1', token))  # the lapsed turn ends while recovery releases the sandbox
    report = r.sweep(SweepKind.IDLE)
    assert [(x.outcome, x.detail) for x in report.recovered] == [(Outcome.ABORTED, 'turn_finished')]
    assert lc.status('s1').turn_seq == 1  # type: ignore[union-attr]
    assert r.document('s1')['state'] == 'live'  # type: ignore[index]


@pytest.mark.parametrize('store_kind', ['mongo'])  # MongoDB's own fail points or collections
def test_a_checkpoint_older_than_what_mongodb_holds_is_refused_and_writes_nothing(reaper: Reaper) -> None:
    from lifecycle.errors import Fenced
    from lifecycle.stores.mongo import MongoSnapshotStore

    lc, store = reaper.lc, reaper.store
    assert isinstance(store, MongoSnapshotStore)
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=3600)
    turns(reaper, 's1', 2)
    assert lc.checkpoint('s1', {'turns': 2}, [{'id': 'm2', 'text': 'second'}]) == 2
    # A replica that read turn 1 before pausing now writes: a newer checkpoint is already there.
    with pytest.raises(Fenced, match='turn 2'):
        store.checkpoint('s1', {'turns': 1}, [{'id': 'm2', 'text': 'stale'}], 1, 1)
    assert reaper.document('s1')['snapshot'] == {'turns': 2}  # type: ignore[index]
    assert store.messages('s1') == [{'id': 'm2', 'text': 'second'}]
    reaper.clock.advance(seconds=600)
    reaper.sweep(SweepKind.IDLE)
    assert reaper.document('s1')['state'] == 'resumable'  # type: ignore[index]
    # ... or it arrives after the session was evicted: the evicted document keeps its checkpoint.
    with pytest.raises(SessionNotLive, match='resumable'):
        store.checkpoint('s1', {'turns': 2}, None, 2, 2)
    assert lc.restore('s1', 'api-2').snapshot == {'turns': 2}


def test_a_checkpoint_during_an_eviction_whose_write_landed_says_the_session_is_being_evicted(reaper: Reaper) -> None:
    """Found by the model: the refusal read 'not live' for a session Redis still held (REAPING)."""
    from lifecycle import SessionReaping

    lc, evictor = reaper.lc, reaper.evictor
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=3600)
    lc.checkpoint('s1', {'turns': 0})
    reaper.clock.advance(seconds=600)
    claim = lc.pool.run(evictor.claims.claim('s1', ReapReason.IDLE, lc.now_ms(), lc.now_ms()))
    assert not isinstance(claim, str)
    assert evictor._persist({0: claim})[0] == {}  # the worker stops here: its claim stays in flight
    with pytest.raises(SessionReaping, match='being evicted'):
        lc.checkpoint('s1', {'turns': 0, 'late': True})
    assert reaper.document('s1')['snapshot'] == {'turns': 0}  # type: ignore[index]


def test_a_restore_that_races_says_why_it_cannot_restore(reaper: Reaper) -> None:
    # Regression: a restore while the eviction was claimed (its write not yet landed) said "not resumable (state:
    # live)", and the loser of two racing restores the same, so the web tier answered 410 or 500.
    lc = reaper.lc
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=3600)
    lc.checkpoint('s1', {'at': 0})
    reaper.clock.advance(seconds=600)
    [claim] = lc.pool.run_many([reaper.evictor.claims.claim('s1', ReapReason.IDLE, lc.now_ms(), lc.now_ms())])
    assert not isinstance(claim, str)
    with pytest.raises(SessionReaping, match='being evicted'):
        lc.restore('s1', 'api-2')
    assert reaper.evictor._persist({0: claim})[0] == {}  # the eviction goes on: written, then finished
    reaper.evictor._complete({0: claim})
    assert lc.status('s1').state is SessionState.RESUMABLE  # type: ignore[union-attr]
    lc.restore('s1', 'api-2')
    with pytest.raises(SessionExists, match='already live'):
        lc.restore('s1', 'api-3')  # the loser of a race
