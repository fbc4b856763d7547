"""Session controls an app asks for at runtime (issue 16): `extend` a session's hard deadline, `pin` it against
idle and LRU reaping, learn which turn an eviction cut off, and have resumable sessions deleted after
their retention, on real Redis and the MongoDB-wire server, through both clients."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aredis

from lifecycle import (
    AsyncLifecycle,
    CapacityExceeded,
    InterruptedTurn,
    InvalidTTL,
    Lifecycle,
    PersistenceError,
    PinLimitReached,
    SessionNotLive,
    SessionReaping,
    SessionState,
)
from lifecycle.errors import InvalidArgument
from lifecycle.models import SANDBOX_RESET_NOTE, ReapReason, SweepKind
from lifecycle.pool.claims import ClaimIndex
from lifecycle.reaper import sweeps
from lifecycle.reaper.eviction import Outcome
from lifecycle.sandboxes import NoopDriver
from tests.conftest import REDIS_URL, SettingsFactory
from tests.integration.conftest import ReaperFactory, Spawn, wait_for, worker_args
from tests.integration.reaper import Reaper, fail

pytestmark = pytest.mark.integration
HOUR_MS = 3_600_000


class MovingDriver(NoopDriver):
    """A driver that can move its sandboxes' own deadlines; records what it was told."""

    def __init__(self) -> None:
        self.moved: list[tuple[str, int]] = []

    def extend_deadline(self, session_id: str, expires_at_ms: int) -> bool:
        self.moved.append((session_id, expires_at_ms))
        return True


def expires_ms(document: dict[str, Any] | None) -> int:
    assert document is not None
    return int(document['expires_at'].timestamp() * 1000)


def test_extend_moves_the_deadline_forward_never_back_never_past_max_ttl(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    driver = MovingDriver()
    r = make_reaper(make_reaper_settings(max_sessions=3, max_ttl_s=4 * 3600, default_ttl_s=3600), driver=driver)
    lc, start = r.lc, r.clock.now_ms()
    lc.activate(lc.reserve('api-1'), 's1')
    r.clock.advance(seconds=1800)

    info = lc.extend('s1', 7200)  # two hours from now: later than the hour it had
    assert info.expires_at_ms == start + 1800_000 + 2 * HOUR_MS
    assert lc.status('s1').expires_at_ms == info.expires_at_ms  # type: ignore[union-attr]
    assert expires_ms(r.document('s1')) == info.expires_at_ms  # recorded durably, what a restore reads
    assert driver.moved == [('s1', info.expires_at_ms)]

    assert lc.extend('s1', 60).expires_at_ms == info.expires_at_ms  # never moves back
    assert lc.extend('s1', 86_400).expires_at_ms == start + 4 * HOUR_MS  # capped at max_ttl_s from creation
    assert expires_ms(r.document('s1')) == start + 4 * HOUR_MS

    # The expiry sweep ends it at the new deadline, not the old one.
    r.clock.advance(seconds=3600)  # past the deadline activation gave
    r.sweep(SweepKind.EXPIRED)
    assert lc.status('s1').state is SessionState.LIVE  # type: ignore[union-attr]
    r.clock.advance(seconds=9000)  # the four hours from creation are up
    r.sweep(SweepKind.EXPIRED)
    assert [(x.session_id, x.outcome) for x in r.results] == [('s1', Outcome.EXPIRED)]
    with pytest.raises(SessionNotLive, match="'s1' is not live"):
        lc.extend('s1', 60)


def test_extend_refuses_a_session_being_evicted_and_bad_input_changing_nothing(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3))
    lc = r.lc
    info = lc.activate(lc.reserve('api-1'), 's1')
    for bad, error in ((0, InvalidTTL), (-5, InvalidTTL), (1.5, InvalidTTL), ('60', InvalidTTL), (True, InvalidTTL),
                       (86_401, InvalidTTL)):  # fmt: skip
        with pytest.raises(error, match=repr(bad) if not isinstance(bad, int) or bad is True else str(bad)):
            lc.extend('s1', bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match='session_id'):
        lc.extend('bad id|x', 60)
    with pytest.raises(SessionNotLive, match="'nobody' is not live"):
        lc.extend('nobody', 60)

    claims = ClaimIndex(lc.settings, lc.pool.keys)
    now = r.clock.now_ms()
    claimed = lc.pool.run(claims.claim('s1', ReapReason.IDLE, now, now, 0))
    assert not isinstance(claimed, str)
    with pytest.raises(SessionReaping, match="'s1' is being evicted"):
        lc.extend('s1', 7200)
    assert lc.pool.run(claims.abort(claimed)) is not None
    assert lc.status('s1').expires_at_ms == info.expires_at_ms  # type: ignore[union-attr]
    assert expires_ms(r.document('s1')) == info.expires_at_ms


def test_a_pool_rebuilt_after_redis_lost_it_keeps_the_extended_deadline(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, max_ttl_s=4 * 3600, default_ttl_s=3600))
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 's1')
    extended = lc.extend('s1', 3 * 3600).expires_at_ms
    for key in lc.redis.scan_iter(match=lc.pool.keys.prefix + '*'):
        lc.redis.delete(key)  # Redis lost the pool
    r.sweep(SweepKind.EXPIRED)  # rebuilds it from MongoDB
    assert lc.status('s1').expires_at_ms == extended  # type: ignore[union-attr]


def test_a_restored_session_keeps_its_extended_deadline(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, max_ttl_s=4 * 3600, default_ttl_s=3600, idle_ttl_s=600))
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 's1')
    extended = lc.extend('s1', 3 * 3600).expires_at_ms
    r.clock.advance(seconds=601)
    r.sweep(SweepKind.IDLE)
    assert [(x.session_id, x.outcome) for x in r.results] == [('s1', Outcome.EVICTED)]
    assert lc.restore('s1', 'api-2').session.expires_at_ms == extended


def test_the_async_client_extends(make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, max_ttl_s=4 * 3600, default_ttl_s=3600))
    start = r.clock.now_ms()

    async def run() -> int:
        client = aredis.Redis.from_url(REDIS_URL, decode_responses=True)
        async with AsyncLifecycle(r.lc.settings, redis_client=client, clock=r.clock) as lc:
            await lc.activate(await lc.reserve('api-1'), 's1')
            with pytest.raises(InvalidTTL):
                await lc.extend('s1', 0)
            return (await lc.extend('s1', 2 * 3600)).expires_at_ms

    assert asyncio.run(run()) == start + 2 * HOUR_MS
    assert expires_ms(r.document('s1')) == start + 2 * HOUR_MS


# -- pin / unpin ---------------------------------------------------------------------------------------------


def idle_evicted(results: list[Any]) -> list[str]:
    return [x.session_id for x in results if x.outcome is Outcome.EVICTED]


def test_a_pinned_session_outlives_idle_sweeps_and_is_evicted_after_unpin(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=4, idle_ttl_s=600))
    lc = r.lc
    for name in ('s1', 's2'):
        lc.activate(lc.reserve('api-1'), name)
    assert lc.pin('s1') is True
    assert lc.pin('s1') is False  # pinned already
    assert lc.status('s1').pinned  # type: ignore[union-attr]
    assert not lc.status('s2').pinned  # type: ignore[union-attr]
    assert lc.extend('s1', 60).pinned  # what extend answers says so too
    assert not lc.extend('s2', 60).pinned
    r.clock.advance(seconds=601)
    r.sweep(SweepKind.IDLE)
    r.clock.advance(seconds=600)
    r.sweep(SweepKind.IDLE)
    assert idle_evicted(r.results) == ['s2']
    assert lc.status('s1').state is SessionState.LIVE  # type: ignore[union-attr]

    # A sweep that read it before the pin still cannot take it: the claim checks the pin.
    assert r.evictor.evict('s1', ReapReason.IDLE, r.clock.now_ms()).detail == 'pinned'

    assert lc.unpin('s1') is True
    assert lc.unpin('s1') is False
    r.clock.advance(seconds=60)
    r.sweep(SweepKind.IDLE)  # its cursor passed it long ago: the recheck set brings it back
    assert idle_evicted(r.results) == ['s2', 's1']


def test_lru_and_make_room_pass_a_pinned_session_over_but_the_hard_deadline_ends_it(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, max_live=2, max_pinned=2, min_idle_s=60, default_ttl_s=3600))
    lc = r.lc
    for name in ('old', 'mid', 'new'):
        lc.activate(lc.reserve('api-1'), name)
        r.clock.advance(seconds=120)
    lc.pin('old')
    r.sweep(SweepKind.LRU)
    assert idle_evicted(r.results) == ['mid']  # the least recently active one that is not pinned
    lc.pin('new')
    lc.activate(lc.reserve('api-1'), 'x')  # the pool is full again (old, new, x)
    r.clock.advance(seconds=120)
    lc.touch('x')
    with pytest.raises(CapacityExceeded):
        lc.reserve('api-1', make_room=True)  # 'x' is the only one make_room may take, and it is too recent
    r.clock.advance(seconds=120)
    lc.release(lc.reserve('api-1', make_room=True))  # now 'x' makes room, the older pinned ones stay
    assert [lc.status(s).state for s in ('old', 'new', 'x')] == [SessionState.LIVE, SessionState.LIVE,  # type: ignore[union-attr]
                                                                 SessionState.RESUMABLE]  # fmt: skip
    lc.activate(lc.reserve('api-1'), 'x2')
    r.clock.advance(seconds=3600)
    r.sweep(SweepKind.EXPIRED)
    assert {x.session_id for x in r.results if x.outcome is Outcome.EXPIRED} == {'old', 'new', 'x2'}
    assert lc.redis.zcard(lc.pool.keys.pinned) == 0  # the pins left with their sessions


def test_a_lost_replicas_pinned_session_is_still_recovered(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, replica_ttl_s=30))
    lc = r.lc
    lc.heartbeat('api-1')
    lc.activate(lc.reserve('api-1'), 's1')
    lc.pin('s1')
    r.clock.advance(seconds=31)
    r.sweep(SweepKind.OWNER_LOST)
    assert idle_evicted(r.results) == ['s1']
    assert lc.restore('s1', 'api-2').session.pinned is False


def test_pins_are_bounded_in_the_pool_and_per_tenant(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=6, max_pinned=3, max_pinned_per_tenant=2))
    lc = r.lc
    for name, tenant in (('a1', 'acme'), ('a2', 'acme'), ('a3', 'acme'), ('b1', 'beta'), ('b2', 'beta'),
                         ('n1', None)):  # fmt: skip
        lc.activate(lc.reserve('api-1', tenant), name)
    lc.pin('a1')
    lc.pin('a2')
    with pytest.raises(PinLimitReached, match="tenant 'acme' has 2 pinned sessions, its limit is 2") as refused:
        lc.pin('a3')
    assert (refused.value.pinned, refused.value.limit, refused.value.tenant) == (2, 2, 'acme')
    lc.pin('b1')
    with pytest.raises(PinLimitReached, match='the pool has 3 pinned sessions, its limit is 3'):
        lc.pin('n1')
    lc.close('a1')  # a session that ends gives its pin back, to the pool and to its tenant
    lc.pin('a3')
    lc.unpin('b1')
    lc.pin('n1')
    assert sorted(lc.redis.zrange(lc.pool.keys.pinned, 0, -1)) == ['a2', 'a3', 'n1']
    assert sorted(lc.redis.zrange(lc.pool.keys.pinned_tenants, 0, -1)) == ['acme|a2', 'acme|a3']

    # Refusals and bad input change nothing.
    with pytest.raises(SessionNotLive, match="'a1' is not live"):
        lc.pin('a1')
    with pytest.raises(InvalidArgument, match='session_id'):
        lc.pin('')
    with pytest.raises(InvalidArgument, match='session_id'):
        lc.unpin(None)  # type: ignore[arg-type]
    claims = ClaimIndex(lc.settings, lc.pool.keys)
    now = r.clock.now_ms()
    claimed = lc.pool.run(claims.claim('b2', ReapReason.IDLE, now, now, 0))
    assert not isinstance(claimed, str)
    with pytest.raises(SessionReaping):
        lc.pin('b2')
    assert lc.redis.zcard(lc.pool.keys.pinned) == 3

    # Outside damage: a pin of a session that is gone (a hand edit) is dropped by reconcile.
    lc.redis.zadd(lc.pool.keys.pinned, {'ghost': 1})
    lc.redis.zadd(lc.pool.keys.pinned_tenants, {'acme|ghost': 0, 'beta|nobody': 0})
    r.sweep(SweepKind.RECONCILE)
    assert sorted(lc.redis.zrange(lc.pool.keys.pinned, 0, -1)) == ['a2', 'a3', 'n1']
    assert sorted(lc.redis.zrange(lc.pool.keys.pinned_tenants, 0, -1)) == ['acme|a2', 'acme|a3']


def test_the_async_client_pins_and_unpins(make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, max_pinned=1))

    async def run() -> None:
        client = aredis.Redis.from_url(REDIS_URL, decode_responses=True)
        async with AsyncLifecycle(r.lc.settings, redis_client=client, clock=r.clock) as lc:
            for name in ('s1', 's2'):
                await lc.activate(await lc.reserve('api-1'), name)
            assert await lc.pin('s1') is True
            with pytest.raises(PinLimitReached):
                await lc.pin('s2')
            assert (await lc.status('s1')).pinned  # type: ignore[union-attr]
            assert await lc.unpin('s1') is True
            assert await lc.pin('s2') is True

    asyncio.run(run())


# -- interrupted turns and the restore note ---------------------------------------------------------------


def begin_turn_and_die(lc: Lifecycle, session_id: str) -> int:
    """Begin a turn as a replica would, then never renew or end it (the replica died mid-turn); its start."""
    started = lc.now_ms()
    lc.pool.do(lc.flows.begin_turn(session_id, 'dead-turn', lc.store))
    return started


def test_a_restore_after_the_owner_died_mid_turn_returns_the_interrupted_turn(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, replica_ttl_s=30, busy_lease_s=60, idle_ttl_s=600))
    lc = r.lc
    lc.heartbeat('api-1')
    lc.activate(lc.reserve('api-1'), 's1')
    with lc.turn('s1'):
        pass
    lc.checkpoint('s1', {'turns': 1})
    started = begin_turn_and_die(lc, 's1')
    r.clock.advance(seconds=31)  # its heartbeat is lost, but the turn's busy lease still holds it
    r.sweep(SweepKind.OWNER_LOST)
    assert [(x.session_id, x.outcome, x.detail) for x in r.results] == [('s1', Outcome.KEPT, 'busy')]
    r.results.clear()
    r.clock.advance(seconds=30)  # the busy lease ran out: the turn will never end
    r.sweep(SweepKind.OWNER_LOST)
    assert idle_evicted(r.results) == ['s1']
    cut = InterruptedTurn(seq=2, started_at_ms=started, owner='api-1')
    assert lc.status('s1').interrupted_turn == cut  # type: ignore[union-attr]

    restored = lc.restore('s1', 'api-2', approval_pending=True)
    assert restored.interrupted_turn == cut
    assert restored.note is None  # an approval is pending: a note now would orphan its tool result
    assert restored.snapshot == {'turns': 1}

    # Reported once: the life after the restore starts clean, and a clean idle eviction cuts nothing off.
    r.clock.advance(seconds=601)
    r.sweep(SweepKind.IDLE)
    assert idle_evicted(r.results) == ['s1', 's1']
    again = lc.restore('s1', 'api-2')
    assert again.interrupted_turn is None
    assert again.note == SANDBOX_RESET_NOTE


def test_the_restore_note_tells_of_the_reset_sandbox_and_the_turn_cut_off(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, busy_lease_s=60, idle_ttl_s=600))
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 's1')
    begin_turn_and_die(lc, 's1')  # a crash of the request (the replica lives on and heartbeats)
    r.clock.advance(seconds=601)
    r.sweep(SweepKind.IDLE)
    assert idle_evicted(r.results) == ['s1']
    restored = lc.restore('s1', 'api-1')
    assert restored.interrupted_turn is not None
    assert restored.interrupted_turn.seq == 1
    assert restored.note is not None
    assert restored.note.startswith(SANDBOX_RESET_NOTE)
    assert 'turn 1 was cut off' in restored.note
    with pytest.raises(InvalidArgument, match="approval_pending must be True or False, got 'no'"):
        lc.restore('s1', 'api-1', approval_pending='no')  # type: ignore[arg-type]


def test_a_deadline_hit_mid_turn_is_recorded_with_the_expired_session(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, busy_lease_s=60))
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=100)
    lc.activate(lc.reserve('api-1'), 's2', ttl_seconds=100)
    started = r.clock.now_ms()
    with lc.turn('s1'):  # still running when the hard deadline passes
        r.clock.advance(seconds=101)
        r.sweep(SweepKind.EXPIRED)
    assert sorted(x.session_id for x in r.results if x.outcome is Outcome.EXPIRED) == ['s1', 's2']
    info = lc.status('s1')
    assert info is not None
    assert info.state is SessionState.EXPIRED
    assert info.interrupted_turn == InterruptedTurn(seq=1, started_at_ms=started, owner='api-1')
    assert lc.status('s2').interrupted_turn is None  # type: ignore[union-attr]
    with pytest.raises(SessionNotLive, match=r"'s1' is not resumable \(state: expired\); its turn 1 was cut off"):
        lc.restore('s1', 'api-1')


def test_the_async_client_restores_with_and_without_the_note(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, idle_ttl_s=600))
    for name in ('s1', 's2'):
        r.lc.activate(r.lc.reserve('api-1'), name)
    r.clock.advance(seconds=601)
    r.sweep(SweepKind.IDLE)

    async def run() -> tuple[str | None, str | None]:
        client = aredis.Redis.from_url(REDIS_URL, decode_responses=True)
        async with AsyncLifecycle(r.lc.settings, redis_client=client, clock=r.clock) as lc:
            one = await lc.restore('s1', 'api-1')
            two = await lc.restore('s2', 'api-1', approval_pending=True)
            return one.note, two.note

    assert asyncio.run(run()) == (SANDBOX_RESET_NOTE, None)


# -- retention of resumable sessions ----------------------------------------------------------------------


def test_resumable_sessions_are_deleted_after_their_retention_in_bounded_batches(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweeps, 'RETENTION_BATCH', 2)
    r = make_reaper(make_reaper_settings(max_sessions=8, idle_ttl_s=600, resumable_retention_s=1))
    lc = r.lc
    old = ['s1', 's2', 's3', 's4', 's5']
    for name in [*old, 'back']:
        lc.activate(lc.reserve('api-1'), name)
        with lc.turn(name):
            pass
        lc.checkpoint(name, {'name': name}, [{'id': 'm1', 'text': name}])
    r.clock.advance(seconds=601)
    r.sweep(SweepKind.IDLE)
    assert sorted(idle_evicted(r.results)) == sorted([*old, 'back'])
    lc.restore('back', 'api-1')  # restored: not resumable any more, never deleted
    r.clock.advance(seconds=1.2)  # past the retention of 1 s, by lifecycle time (the clock `evicted_at` is on)
    lc.activate(lc.reserve('api-1'), 'late')
    with lc.turn('late'):
        pass
    lc.checkpoint('late', {'name': 'late'})
    r.clock.advance(seconds=601)
    lc.touch('back')
    r.sweep(SweepKind.IDLE)  # 'late' is evicted now: within its retention
    assert idle_evicted(r.results)[-1] == 'late'

    assert r.sweep(SweepKind.RETENTION, dry_run=True).deleted_sessions == 2  # one batch's worth, nothing deleted
    assert lc.status('s1').state is SessionState.RESUMABLE  # type: ignore[union-attr]
    report = r.sweep(SweepKind.RETENTION)
    assert report.deleted_sessions == 5  # in batches of 2
    store = r.store
    assert store is not None
    for name in old:
        info = lc.status(name)
        assert info is not None
        assert info.state is SessionState.DELETED
        document = r.document(name)
        assert document is not None
        assert 'snapshot' not in document
        assert store.messages(name) == []
        with pytest.raises(SessionNotLive, match=f"'{name}' was deleted: it stayed resumable for "
                                                 'resumable_retention_s=1 s'):  # fmt: skip
            lc.restore(name, 'api-1')
    assert lc.status('late').state is SessionState.RESUMABLE  # type: ignore[union-attr]
    assert lc.status('back').state is SessionState.LIVE  # type: ignore[union-attr]
    assert store.messages('back') == [{'id': 'm1', 'text': 'back'}]
    assert lc.redis.hget(lc.pool.keys.counters, 'deleted:retention') == '5'
    assert lc.stats().live == 1  # nothing in the pool moved


def delete_cut_short(r: Reaper, mongo_admin: Any, message_id: str) -> None:
    """Session 's1', with one message, evicted and then past its retention; the retention sweep tombstones it,
    but MongoDB refuses the deletion of its messages (a crash at that step, say)."""
    r.lc.activate(r.lc.reserve('api-1'), 's1')
    r.lc.checkpoint('s1', {'n': 1}, [{'id': message_id}])
    r.clock.advance(seconds=601)
    r.sweep(SweepKind.IDLE)
    r.clock.advance(seconds=1.2)  # past the retention of 1 s, by lifecycle time (the clock `evicted_at` is on)
    fail(mongo_admin, 'delete', errorCode=8)
    with pytest.raises(PersistenceError):
        r.sweep(SweepKind.RETENTION)
    mongo_admin.admin.command('configureFailPoint', 'failCommand', mode='off')


def test_a_retention_sweep_cut_short_deletes_the_messages_on_the_next(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, mongo_admin: Any
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, idle_ttl_s=600, resumable_retention_s=1))
    lc = r.lc
    delete_cut_short(r, mongo_admin, 'm1')
    assert lc.status('s1').state is SessionState.DELETED  # type: ignore[union-attr]
    assert r.store is not None
    assert r.store.messages('s1') == [{'id': 'm1'}]  # the tombstone is marked: its messages go next time
    assert r.sweep(SweepKind.RETENTION).deleted_sessions == 0
    assert r.store.messages('s1') == []
    assert 'purge_pending' not in (r.document('s1') or {})


def test_retention_unset_keeps_resumable_sessions(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, resumable_retention_s=None))
    assert r.sweep(SweepKind.RETENTION).skipped == 'resumable_retention_s is unset: resumable sessions are kept'


# -- all of it through a real worker and beat ---------------------------------------------------------------


def state_of(lc: Lifecycle, session_id: str) -> SessionState | None:
    info = lc.status(session_id)
    return info.state if info is not None else None


def test_pins_extensions_interrupted_turns_and_retention_through_a_real_worker(
    make_reaper_settings: SettingsFactory, broker: str, spawn: Spawn
) -> None:
    settings = make_reaper_settings(
        broker_url=broker, max_sessions=6, max_pinned=2, idle_ttl_s=2, idle_interval_s=1, expired_interval_s=1,
        owner_lost_interval_s=1, replica_ttl_s=3, busy_lease_s=3, warn_before_s=1, warnings_interval_s=1,
        resumable_retention_s=2, retention_interval_s=1,
    )  # fmt: skip
    lc = Lifecycle(settings)
    for name in ('idle', 'pinned', 'extended'):
        lc.activate(lc.reserve('api-1'), name, ttl_seconds=4 if name == 'extended' else None)
    lc.pin('pinned')
    lc.pin('extended')  # a pin never outlasts the deadline: here it keeps idle reaping off the deadline's test
    lc.extend('extended', 60)
    lc.heartbeat('api-dead')
    lc.activate(lc.reserve('api-dead'), 'cut')
    begin_turn_and_die(lc, 'cut')
    spawn(settings, *worker_args('w1'))
    spawn(settings, 'beat')

    wait_for(lambda: state_of(lc, 'cut') is SessionState.RESUMABLE, 60, 'owner-lost recovery of the dead turn')
    restored = lc.restore('cut', 'api-1')  # at once: its retention (2 s) runs from its eviction
    assert restored.interrupted_turn is not None
    assert (restored.interrupted_turn.seq, restored.interrupted_turn.owner) == (1, 'api-dead')
    assert restored.note is not None
    assert 'turn 1 was cut off' in restored.note

    wait_for(lambda: state_of(lc, 'idle') is SessionState.DELETED, 60, 'the idle session to pass its retention')
    time.sleep(max(0, (lc.status('pinned').last_active_ms + 5_000 - lc.now_ms()) / 1000))  # type: ignore[union-attr]
    assert state_of(lc, 'pinned') is SessionState.LIVE  # idle more than twice its timeout, under live sweeps
    assert state_of(lc, 'extended') is SessionState.LIVE  # past the 4 s it was activated with
    with pytest.raises(SessionNotLive, match="'idle' was deleted"):
        lc.restore('idle', 'api-1')

    lc.unpin('pinned')
    wait_for(lambda: state_of(lc, 'pinned') is not SessionState.LIVE, 30, 'the unpinned session to be evicted')
    assert lc.status('extended').expires_at_ms > lc.now_ms() + 30_000  # type: ignore[union-attr]
    assert lc.store is not None
    lc.store.close()
    lc.disconnect()


# -- found by review ------------------------------------------------------------------------------------------


def test_an_id_whose_messages_are_still_being_deleted_is_not_activated_again(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, mongo_admin: Any
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, idle_ttl_s=600, resumable_retention_s=1))
    lc = r.lc
    delete_cut_short(r, mongo_admin, 'old')
    with pytest.raises(SessionReaping, match="'s1' is being deleted"):
        lc.activate(lc.reserve('api-1'), 's1')  # its old messages would become the new life's
    assert lc.stats().live == 0  # the refused activation was undone, its slot given back
    r.sweep(SweepKind.RETENTION)
    lc.activate(lc.reserve('api-1'), 's1')
    lc.checkpoint('s1', {'n': 2}, [{'id': 'new'}])
    r.sweep(SweepKind.RETENTION)
    assert r.store is not None
    assert r.store.messages('s1') == [{'id': 'new'}]


def test_make_room_reads_past_the_pinned_sessions(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=24, max_pinned=22, min_idle_s=60))
    lc = r.lc
    for i in range(24):
        lc.activate(lc.reserve('api-1'), f's{i:02}')
        if i < 22:
            lc.pin(f's{i:02}')  # the 22 least recently active are pinned: more than make_room's 20 candidates
        r.clock.advance(seconds=1)
    r.clock.advance(seconds=120)
    lc.release(lc.reserve('api-1', make_room=True))
    assert lc.status('s22').state is SessionState.RESUMABLE  # type: ignore[union-attr]
    assert lc.stats().live == 23


def test_a_turn_start_is_known_though_another_entry_predates_starts(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, idle_ttl_s=600, busy_lease_s=60))
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 's1')
    now = r.clock.now_ms()
    # A rolling upgrade: one turn written by a version that kept no start, one that did; both lapsed since.
    lc.redis.hset(lc.pool.keys.turns, 's1', f'old={now + 60_000},new={now + 60_000}:{now + 5}')
    r.clock.advance(seconds=601)
    r.sweep(SweepKind.IDLE)
    assert idle_evicted(r.results) == ['s1']
    assert lc.status('s1').interrupted_turn == InterruptedTurn(1, now + 5, 'api-1')  # type: ignore[union-attr]
