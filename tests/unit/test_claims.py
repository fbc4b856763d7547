"""The eviction scripts (claim, finish, abort, reclaim, reconcile) on fakeredis and on the real server."""

from __future__ import annotations

import pytest

from lifecycle import FixedClock, Lifecycle, SessionReaping
from lifecycle.errors import SessionDamaged
from lifecycle.models import ReapReason
from lifecycle.pool.claims import Claim, ClaimIndex, Step

FAR_FUTURE = 2**50


@pytest.fixture
def claims(lc: Lifecycle) -> ClaimIndex:
    return ClaimIndex(lc.settings, lc.index.keys)


def live(lc: Lifecycle, session_id: str, owner: str = 'api-1', tenant: str | None = None, ttl: int = 900) -> None:
    lc.activate(lc.reserve(owner, tenant), session_id, ttl_seconds=ttl)


def claim(lc: Lifecycle, claims: ClaimIndex, session_id: str, reason: ReapReason, bound: int | str = FAR_FUTURE,
          observed: int = 0) -> Claim | str:  # fmt: skip
    return lc.pool.run(claims.claim(session_id, reason, lc.now_ms(), bound, observed))


def test_an_idle_claim_takes_a_fresh_token_and_blocks_turns(lc: Lifecycle, claims: ClaimIndex) -> None:
    live(lc, 's1')
    live(lc, 's2')
    first = claim(lc, claims, 's1', ReapReason.IDLE)
    second = claim(lc, claims, 's2', ReapReason.IDLE)
    assert isinstance(first, Claim)
    assert isinstance(second, Claim)
    assert second.token > first.token
    assert first.meta is not None
    assert first.meta.owner == 'api-1'
    assert claim(lc, claims, 's1', ReapReason.IDLE) == 'claimed'
    with pytest.raises(SessionReaping), lc.turn('s1'):
        pass
    assert lc.stats().reaping == 2


def test_a_claim_yields_to_activity_busy_leases_and_deadlines(
    lc: Lifecycle, claims: ClaimIndex, fixed_clock: FixedClock
) -> None:
    live(lc, 's1', ttl=60)
    stamped = lc.now_ms()
    assert claim(lc, claims, 's1', ReapReason.IDLE, bound=stamped - 1) == 'not_due'
    with lc.turn('s1'):
        assert claim(lc, claims, 's1', ReapReason.IDLE) == 'busy'
        assert claim(lc, claims, 's1', ReapReason.MAKE_ROOM) == 'busy'
        assert claim(lc, claims, 's1', ReapReason.EXPIRED) == 'not_due'
        fixed_clock.advance(seconds=60)
        assert claim(lc, claims, 's1', ReapReason.IDLE) == 'expired'  # left to the expiry path
        expiring = claim(lc, claims, 's1', ReapReason.EXPIRED)  # only the hard deadline ends a busy session
        assert isinstance(expiring, Claim)
    assert claim(lc, claims, 'ghost', ReapReason.IDLE) == 'not_live'


def test_an_lru_claim_needs_the_pool_over_its_soft_cap_and_the_activity_unchanged(
    lc: Lifecycle, claims: ClaimIndex, fixed_clock: FixedClock
) -> None:
    for i in range(3):
        live(lc, f's{i}')
        fixed_clock.advance(ms=1)
    seen = lc.status('s0').last_active_ms  # type: ignore[union-attr]
    assert claim(lc, claims, 's0', ReapReason.LRU, bound=3, observed=seen) == 'not_due'
    assert claim(lc, claims, 's0', ReapReason.LRU, bound=2, observed=seen - 1) == 'moved'
    assert isinstance(claim(lc, claims, 's0', ReapReason.LRU, bound=2, observed=seen), Claim)
    # The pool minus the session already going is at the soft cap: the next one stays.
    s1 = lc.status('s1').last_active_ms  # type: ignore[union-attr]
    assert claim(lc, claims, 's1', ReapReason.LRU, bound=2, observed=s1) == 'not_due'


def test_an_owner_lost_claim_needs_the_owners_heartbeat_to_have_expired(
    lc: Lifecycle, claims: ClaimIndex, fixed_clock: FixedClock
) -> None:
    live(lc, 's1', owner='api-1')
    lc.heartbeat('api-1')
    assert claim(lc, claims, 's1', ReapReason.OWNER_LOST, bound='api-1') == 'not_due'
    assert claim(lc, claims, 's1', ReapReason.OWNER_LOST, bound='api-2') == 'not_due'
    fixed_clock.advance(seconds=lc.settings.replica_ttl_s)
    assert isinstance(claim(lc, claims, 's1', ReapReason.OWNER_LOST, bound='api-1'), Claim)


def test_finish_is_fenced_by_the_token_and_posts_a_notice(lc: Lifecycle, claims: ClaimIndex) -> None:
    live(lc, 's1', tenant='acme')
    taken = claim(lc, claims, 's1', ReapReason.IDLE)
    assert isinstance(taken, Claim)
    stale = Claim('s1', taken.token - 1, taken.reason, taken.meta, 0, 0)
    assert lc.pool.run(claims.finish(stale, lc.now_ms())) is Step.FENCED
    assert lc.pool.run(claims.abort(stale)) is False
    assert lc.status('s1') is not None
    assert lc.pool.run(claims.finish(taken, lc.now_ms())) is Step.DONE
    assert lc.status('s1') is None
    stats = lc.stats()
    assert (stats.live, stats.reaping, stats.slots) == (0, 0, 0)
    assert lc.redis.zcard(lc.index.keys.tenants) == 1  # only its marker
    assert [(n.kind, n.session_id, n.reason) for n in lc.notices('api-1')] == [('evicted', 's1', 'idle')]
    assert lc.pool.run(claims.finish(taken, lc.now_ms())) is Step.FENCED  # a repeat is a no-op


def test_abort_leaves_the_session_live_and_turnable(lc: Lifecycle, claims: ClaimIndex) -> None:
    live(lc, 's1')
    taken = claim(lc, claims, 's1', ReapReason.IDLE)
    assert isinstance(taken, Claim)
    assert lc.pool.run(claims.abort(taken)) is True
    with lc.turn('s1') as turn:
        pass
    assert turn.finished_seq == 1
    assert lc.stats().reaping == 0


def test_reclaim_takes_over_only_an_expired_claim_under_a_new_token(
    lc: Lifecycle, claims: ClaimIndex, fixed_clock: FixedClock
) -> None:
    live(lc, 's1')
    taken = claim(lc, claims, 's1', ReapReason.IDLE)
    assert isinstance(taken, Claim)
    assert lc.pool.run(claims.reclaim('s1', lc.now_ms())) is None
    fixed_clock.advance(seconds=lc.settings.claim_lease_s)
    takeover = lc.pool.run(claims.reclaim('s1', lc.now_ms()))
    assert takeover is not None
    assert takeover.old_token == taken.token
    assert takeover.claim.token > taken.token
    assert takeover.claim.reason is ReapReason.IDLE
    assert lc.pool.run(claims.finish(taken, lc.now_ms())) is Step.FENCED  # the paused worker is fenced off
    assert lc.pool.run(claims.finish(takeover.claim, lc.now_ms())) is Step.DONE


def test_a_lapsed_turn_cannot_sneak_back_under_a_claim(
    lc: Lifecycle, claims: ClaimIndex, fixed_clock: FixedClock
) -> None:
    live(lc, 's1')
    lc.pool.run(lc.index.begin_turn('s1', 'slow-turn', lc.now_ms()))
    fixed_clock.advance(seconds=lc.settings.busy_lease_s)  # its heartbeat could not reach Redis
    assert isinstance(claim(lc, claims, 's1', ReapReason.IDLE), Claim)
    assert lc.pool.run(lc.index.renew_turn('s1', 'slow-turn', lc.now_ms())) == 3
    assert not lc.status('s1').busy  # type: ignore[union-attr]


def test_reconcile_moves_records_of_the_first_layout_into_their_buckets(lc: Lifecycle) -> None:
    from lifecycle.reaper.eviction import Evictor
    from lifecycle.reaper.sweeps import Sweeper, SweepKind
    from lifecycle.sandboxes import NoopDriver

    k = lc.index.keys
    for i in range(5):
        live(lc, f's{i}', tenant='acme')
    # A pool upgraded in place: its records still sit in the single hash of the first layout.
    for i in range(5):
        record = lc.redis.hget(k.meta_of(f's{i}'), f's{i}')
        lc.redis.hdel(k.meta_of(f's{i}'), f's{i}')
        lc.redis.hset(k.legacy_meta, f's{i}', record)
    lc.redis.hset(k.legacy_meta, 's0', 'stale|acme||0|0')  # s0 was written again since, in its bucket:
    lc.redis.hset(k.meta_of('s0'), 's0', 'api-1|acme||0|9')  # the bucket's newer record wins
    with pytest.raises(SessionDamaged):  # to the scripts, s1 has no record until it moves
        lc.status('s1')
    sweeper = Sweeper(lc.pool, Evictor(lc.pool, None, NoopDriver()), lambda orders: None)
    assert sweeper.sweep(SweepKind.RECONCILE, dedupe=False).ran
    assert not lc.redis.exists(k.legacy_meta)
    assert lc.status('s1').tenant == 'acme'  # type: ignore[union-attr]
    assert lc.redis.hget(k.meta_of('s0'), 's0') == 'api-1|acme||0|9'
    assert lc.stats().live == 5
