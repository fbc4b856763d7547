"""Durable before evicted holds across restores and across turns that end while an eviction is in flight."""

from __future__ import annotations

import pytest

from lifecycle import SessionState
from lifecycle.eviction import Outcome
from lifecycle.models import ReapReason
from lifecycle.policy import Order
from lifecycle.sweeps import SweepKind
from tests.conftest import SettingsFactory
from tests.integration.conftest import ReaperFactory
from tests.integration.reaper import Reaper


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
        claims = lc.run_many([evictor.claims.claim('s1', ReapReason.IDLE, lc.now_ms(), lc.now_ms() - 600_000)])
        claim = claims[0]
        assert not isinstance(claim, str)
        assert evictor._persist({0: claim}) == {}  # the durable write landed (covers turn 0)
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
        claim = lc.run_many([evictor.claims.claim('s1', ReapReason.IDLE, lc.now_ms(), lc.now_ms() - 600_000)])[0]
        assert not isinstance(claim, str)
        assert evictor._persist({0: claim}) == {}
    # The worker dies here; its claim's lease runs out and the next sweep recovers it.
    reaper.clock.advance(seconds=61)
    report = reaper.sweep(SweepKind.IDLE)
    assert [(r.outcome, r.detail) for r in report.recovered] == [(Outcome.ROLLED_BACK, 'turn_finished')]
    assert lc.status('s1').state is SessionState.LIVE  # type: ignore[union-attr]
    assert reaper.document('s1')['state'] == 'live'  # type: ignore[index]
    evicted = reaper.evictor.evict_many([Order('s1', ReapReason.IDLE, lc.now_ms())])
    assert (evicted[0].outcome, evicted[0].detail) == (Outcome.ABORTED, 'not_checkpointed')


def test_checkpointing_a_session_that_is_not_live_writes_nothing(reaper: Reaper) -> None:
    from lifecycle import SessionNotLive

    with pytest.raises(SessionNotLive):
        reaper.lc.checkpoint('never-existed', {'v': 1}, [{'id': 'm1'}])
    assert reaper.document('never-existed') is None
    assert reaper.store is not None
    assert reaper.store.messages('never-existed') == []
