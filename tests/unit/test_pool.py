"""The pool's transitions, on fakeredis and on the real server (the 'real' variants are integration tests)."""

from __future__ import annotations

import pytest
import redis

from lifecycle import (
    CapacityExceeded,
    FixedClock,
    InvalidArgument,
    InvalidTTL,
    Lifecycle,
    ProfilePolicy,
    ReservationLost,
    SessionExists,
    SessionNotLive,
    SessionReaping,
    SessionState,
    Settings,
)
from tests.conftest import SettingsFactory


def assert_counter_consistent(lc: Lifecycle) -> None:
    k = lc.index.keys
    slots = int(lc.redis.get(k.slots) or 0)
    assert slots == lc.redis.zcard(k.live) + lc.redis.zcard(k.reservations)
    assert tenant_members(lc) == expected_tenant_members(lc)


def tenant_members(lc: Lifecycle) -> set[str]:
    """The tenant index, without its marker."""
    return {str(m) for m in lc.redis.zrange(lc.index.keys.tenants, 0, -1)} - {'#'}


def expected_tenant_members(lc: Lifecycle) -> set[str]:
    """What the tenant index must hold: one member per live session and per reservation of a tenant."""
    k = lc.index.keys
    expected = set()
    for member in map(str, lc.redis.zrange(k.reservations, 0, -1)):
        if tenant := member.rsplit('|', 1)[1]:
            expected.add(f'{tenant}|{member}')
    for session_id in map(str, lc.redis.zrange(k.live, 0, -1)):
        if tenant := str(lc.redis.hget(k.meta_of(session_id), session_id)).split('|')[1]:
            expected.add(f'{tenant}|{session_id}')
    return expected


def snapshot(client: redis.Redis, prefix: str) -> dict[str, object]:
    return {key: client.dump(key) for key in client.scan_iter(match='{' + prefix + '}*')}


def test_reserve_admits_up_to_the_cap_then_refuses_with_the_figures(lc: Lifecycle) -> None:
    held = [lc.reserve('api-1') for _ in range(5)]
    assert len({r.token for r in held}) == 5
    with pytest.raises(CapacityExceeded) as refused:
        lc.reserve('api-1')
    assert (refused.value.live, refused.value.reserved, refused.value.cap, refused.value.tenant) == (0, 5, 5, None)
    assert_counter_consistent(lc)


def test_live_and_reserved_sessions_both_count_against_the_cap(lc: Lifecycle) -> None:
    for i in range(3):
        lc.activate(lc.reserve('api-1'), f's{i}')
    lc.reserve('api-1')
    lc.reserve('api-1')
    with pytest.raises(CapacityExceeded) as refused:
        lc.reserve('api-2')
    assert (refused.value.live, refused.value.reserved) == (3, 2)
    stats = lc.stats()
    assert (stats.live, stats.reserved, stats.cap, stats.slots) == (3, 2, 5, 5)


def test_reserving_again_with_the_same_token_takes_no_second_slot(lc: Lifecycle) -> None:
    first = lc.reserve('api-1', token='create-42')
    again = lc.reserve('api-1', token='create-42')
    assert again == first
    call = lc.index.reserve('api-1', None, 'create-43', lc.now_ms())
    assert lc.pool.run(call) == lc.pool.run(call)  # the same EVALSHA resent after a lost reply
    assert lc.stats().slots == 2
    assert_counter_consistent(lc)


def test_an_expired_reservation_gives_its_slot_back(lc: Lifecycle, fixed_clock: FixedClock) -> None:
    for _ in range(5):
        lc.reserve('crashed-creator')
    with pytest.raises(CapacityExceeded):
        lc.reserve('api-1')
    fixed_clock.advance(seconds=lc.settings.reservation_lease_s)
    assert lc.stats().reserved == 0
    held = [lc.reserve('api-1') for _ in range(5)]
    assert len(held) == 5
    assert_counter_consistent(lc)


def test_activate_sets_the_hard_deadline_from_ttl_seconds(lc: Lifecycle, fixed_clock: FixedClock) -> None:
    now = fixed_clock.now_ms()
    info = lc.activate(lc.reserve('api-1', 'acme'), 'chat-1', ttl_seconds=60, profile='notebook')
    assert info.expires_at_ms == now + 60_000
    assert (info.state, info.owner, info.tenant, info.profile) == (SessionState.LIVE, 'api-1', 'acme', 'notebook')
    assert (info.created_at_ms, info.last_active_ms, info.turn_seq, info.busy) == (now, now, 0, False)
    assert info.expires_at.tzinfo is not None
    default = lc.activate(lc.reserve('api-1'), 'chat-2')
    assert default.expires_at_ms == now + 8 * 3600 * 1000
    assert_counter_consistent(lc)


def test_profiles_bound_the_ttl(
    make_settings: SettingsFactory, redis_client: redis.Redis, fixed_clock: FixedClock
) -> None:
    settings = make_settings(profiles={'short': ProfilePolicy(idle_ttl_s=10, default_ttl_s=30, max_ttl_s=60)})
    lc = Lifecycle(settings, redis_client=redis_client, clock=fixed_clock)
    assert lc.activate(lc.reserve('a'), 's1', profile='short').expires_at_ms == fixed_clock.now_ms() + 30_000
    with pytest.raises(InvalidTTL, match=r'1\.\.60'):
        lc.activate(lc.reserve('a'), 's2', ttl_seconds=61, profile='short')


@pytest.mark.parametrize('ttl', [0, -5, 86_401, 2.5, '60', True])
def test_a_bad_ttl_writes_nothing(lc: Lifecycle, redis_client: redis.Redis, key_prefix: str, ttl: object) -> None:
    reservation = lc.reserve('api-1')
    before = snapshot(redis_client, key_prefix)
    with pytest.raises(InvalidTTL, match='ttl_seconds'):
        lc.activate(reservation, 'chat-1', ttl_seconds=ttl)  # type: ignore[arg-type]
    assert snapshot(redis_client, key_prefix) == before
    assert lc.activate(reservation, 'chat-1').state is SessionState.LIVE


@pytest.mark.parametrize('session_id', ['', 'a b', 'a|b', '{x}', 'x' * 129, None])
def test_a_bad_session_id_writes_nothing(
    lc: Lifecycle, redis_client: redis.Redis, key_prefix: str, session_id: object
) -> None:
    reservation = lc.reserve('api-1')
    before = snapshot(redis_client, key_prefix)
    with pytest.raises(InvalidArgument, match='session_id'):
        lc.activate(reservation, session_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match='session_id'):
        lc.touch_many(['ok', session_id])  # type: ignore[list-item]
    assert snapshot(redis_client, key_prefix) == before


def test_activating_twice_with_the_same_reservation_is_idempotent(lc: Lifecycle) -> None:
    reservation = lc.reserve('api-1')
    first = lc.activate(reservation, 'chat-1')
    assert lc.activate(reservation, 'chat-1') == first
    assert lc.stats().slots == 1
    assert_counter_consistent(lc)


def test_activating_a_taken_id_keeps_the_reservation(lc: Lifecycle) -> None:
    lc.activate(lc.reserve('api-1'), 'chat-1')
    other = lc.reserve('api-2')
    with pytest.raises(SessionExists, match='chat-1'):
        lc.activate(other, 'chat-1')
    assert lc.stats().reserved == 1
    assert lc.release(other)
    assert_counter_consistent(lc)


def test_an_expired_or_released_reservation_cannot_be_activated(lc: Lifecycle, fixed_clock: FixedClock) -> None:
    late = lc.reserve('api-1')
    fixed_clock.advance(seconds=lc.settings.reservation_lease_s + 1)
    with pytest.raises(ReservationLost):
        lc.activate(late, 'chat-1')
    released = lc.reserve('api-1')
    assert lc.release(released) is True
    assert lc.release(released) is False
    with pytest.raises(ReservationLost):
        lc.activate(released, 'chat-1')
    assert lc.stats().slots == 0
    assert_counter_consistent(lc)


def test_tenant_caps_bound_each_tenant_within_the_pool(
    make_settings: SettingsFactory, redis_client: redis.Redis, fixed_clock: FixedClock
) -> None:
    settings = make_settings(max_sessions=10, tenant_max_sessions=2, tenant_limits={'big': 4})
    lc = Lifecycle(settings, redis_client=redis_client, clock=fixed_clock)
    lc.activate(lc.reserve('api', 'acme'), 'a1')
    lc.reserve('api', 'acme')
    with pytest.raises(CapacityExceeded) as refused:
        lc.reserve('api', 'acme')
    assert (refused.value.tenant, refused.value.live, refused.value.reserved, refused.value.cap) == ('acme', 1, 1, 2)
    assert len([lc.reserve('api', 'big') for _ in range(4)]) == 4
    with pytest.raises(CapacityExceeded, match="tenant 'big'"):
        lc.reserve('api', 'big')
    lc.reserve('api')  # no tenant: only the pool cap applies
    assert lc.close('a1')
    lc.reserve('api', 'acme')
    assert_counter_consistent(lc)


def test_touch_stamps_only_live_sessions_and_never_moves_back(lc: Lifecycle, fixed_clock: FixedClock) -> None:
    lc.activate(lc.reserve('api-1'), 'chat-1')
    lc.activate(lc.reserve('api-1'), 'chat-2')
    fixed_clock.advance(seconds=5)
    assert lc.touch('chat-1') is True
    assert lc.touch('ghost') is False
    fixed_clock.advance(seconds=5)
    assert lc.touch_many(['chat-1', 'chat-2', 'ghost']) == 2
    assert lc.touch_many([]) == 0
    assert lc.redis.zscore(lc.index.keys.live, 'ghost') is None
    stamped = fixed_clock.now_ms()
    fixed_clock.advance(seconds=-3)  # a replica whose clock reading is a little behind
    assert lc.touch('chat-1') is True  # live, and its activity is already later: it stays where it is
    info = lc.status('chat-1')
    assert info is not None
    assert info.last_active_ms == stamped


def test_status_is_not_activity(lc: Lifecycle, fixed_clock: FixedClock) -> None:
    created = lc.activate(lc.reserve('api-1'), 'chat-1').last_active_ms
    fixed_clock.advance(seconds=30)
    info = lc.status('chat-1')
    assert info is not None
    assert info.last_active_ms == created
    assert lc.status('ghost') is None


def test_a_turn_holds_the_session_busy_then_bumps_the_sequence_and_stamps(
    lc: Lifecycle, fixed_clock: FixedClock
) -> None:
    lc.activate(lc.reserve('api-1'), 'chat-1')
    fixed_clock.advance(seconds=10)
    with lc.turn('chat-1') as turn:
        info = lc.status('chat-1')
        assert info is not None
        assert info.busy
        assert lc.stats().busy == 1
        fixed_clock.advance(seconds=10)
    assert (turn.seq, turn.finished_seq, turn.lease_lapsed) == (0, 1, False)
    info = lc.status('chat-1')
    assert info is not None
    assert (info.busy, info.turn_seq, info.last_active_ms) == (False, 1, fixed_clock.now_ms())
    assert lc.stats().busy == 0


def test_a_failing_turn_still_releases_busy(lc: Lifecycle) -> None:
    lc.activate(lc.reserve('api-1'), 'chat-1')
    with pytest.raises(ZeroDivisionError), lc.turn('chat-1'):
        _ = 1 / 0
    info = lc.status('chat-1')
    assert info is not None
    assert (info.busy, info.turn_seq) == (False, 1)


def test_overlapping_turns_keep_the_session_busy_until_the_last_ends(lc: Lifecycle) -> None:
    lc.activate(lc.reserve('api-1'), 'chat-1')
    with lc.turn('chat-1'):
        with lc.turn('chat-1'):
            pass
        info = lc.status('chat-1')
        assert info is not None
        assert info.busy
    info = lc.status('chat-1')
    assert info is not None
    assert (info.busy, info.turn_seq) == (False, 2)


def test_a_crashed_turns_lease_lapses_on_its_own(lc: Lifecycle, fixed_clock: FixedClock) -> None:
    lc.activate(lc.reserve('api-1'), 'chat-1')
    lc.pool.run(lc.index.begin_turn('chat-1', 'dead-turn', fixed_clock.now_ms()))  # its holder never ends it
    fixed_clock.advance(seconds=lc.settings.busy_lease_s - 1)
    assert lc.status('chat-1').busy  # type: ignore[union-attr]
    fixed_clock.advance(seconds=1)
    assert not lc.status('chat-1').busy  # type: ignore[union-attr]
    with lc.turn('chat-1'):
        pass
    assert lc.stats().busy == 0
    assert lc.redis.hget(lc.index.keys.turns, 'chat-1') is None


def test_a_turn_refuses_sessions_that_are_not_live(lc: Lifecycle, fixed_clock: FixedClock) -> None:
    with pytest.raises(SessionNotLive, match='ghost'):
        lc.turn('ghost').__enter__()
    lc.activate(lc.reserve('api-1'), 'short', ttl_seconds=5)
    fixed_clock.advance(seconds=5)
    with pytest.raises(SessionNotLive, match='hard deadline'), lc.turn('short'):
        pass


def test_a_turn_refuses_a_session_being_reaped(lc: Lifecycle, fixed_clock: FixedClock) -> None:
    lc.activate(lc.reserve('api-1'), 'chat-1')
    lc.redis.zadd(lc.index.keys.reaping, {'chat-1': fixed_clock.now_ms() + 30_000})  # a worker's claim
    with pytest.raises(SessionReaping), lc.turn('chat-1'):
        pass
    with pytest.raises(SessionReaping):
        lc.close('chat-1')
    assert lc.status('chat-1').state is SessionState.REAPING  # type: ignore[union-attr]


def test_close_gives_the_slot_back_and_forgets_the_session(lc: Lifecycle) -> None:
    lc.activate(lc.reserve('api-1', 'acme'), 'chat-1')
    with lc.turn('chat-1'):
        assert lc.close('chat-1') is True
    assert lc.close('chat-1') is False
    assert lc.status('chat-1') is None
    assert lc.stats().slots == 0
    k = lc.index.keys
    assert tenant_members(lc) == set()
    assert lc.redis.zcard(k.busy) == lc.redis.hlen(k.turns) == 0
    assert_counter_consistent(lc)


def test_heartbeat_records_the_replica_until_its_ttl(lc: Lifecycle, fixed_clock: FixedClock) -> None:
    lc.heartbeat('api-1')
    expected = fixed_clock.now_ms() + lc.settings.replica_ttl_s * 1000
    assert lc.redis.zscore(lc.index.keys.replicas, 'api-1') == expected
    with pytest.raises(InvalidArgument, match='owner'):
        lc.heartbeat('bad owner')


@pytest.fixture
def flushable_lc(settings: Settings, flushable_redis: redis.Redis, fixed_clock: FixedClock) -> Lifecycle:
    return Lifecycle(settings, redis_client=flushable_redis, clock=fixed_clock)


def test_calls_go_on_after_the_server_forgets_its_scripts(flushable_lc: Lifecycle) -> None:
    lc = flushable_lc
    held = lc.reserve('api-1')
    lc.redis.script_flush()  # a restarted or failed-over Redis: every EVALSHA answers NOSCRIPT once
    assert lc.release(held) is True
    lc.activate(lc.reserve('api-1'), 's1')
    assert lc.stats().live == 1
    assert_counter_consistent(lc)


def test_a_batch_answered_noscript_midway_is_sent_again(
    flushable_lc: Lifecycle, monkeypatch: pytest.MonkeyPatch
) -> None:
    lc = flushable_lc
    held = [lc.reserve('api-1') for _ in range(3)]
    check_scripts = redis.client.Pipeline.load_scripts
    flushed: list[bool] = []

    def check_then_lose(pipe: redis.client.Pipeline) -> None:
        check_scripts(pipe)  # type: ignore[no-untyped-call]  # untyped in redis-py
        if not flushed:  # the server loses its scripts between redis-py's check and the batch
            flushed.append(True)
            lc.redis.script_flush()

    monkeypatch.setattr(redis.client.Pipeline, 'load_scripts', check_then_lose)
    assert lc.pool.run_many([lc.index.release(reservation) for reservation in held]) == [True] * 3
    assert flushed
    assert lc.stats().reserved == 0
    assert_counter_consistent(lc)


def test_the_retry_after_of_a_full_pool_whose_oldest_session_is_overdue_is_the_next_idle_sweep(
    lc: Lifecycle, fixed_clock: FixedClock
) -> None:
    # Regression: a session past its idle timeout but kept (busy, waiting for a checkpoint) pinned Retry-After
    # at 1 s, so refused clients retried every second while nothing could free a slot before the next sweep.
    for n in range(5):
        lc.activate(lc.reserve('api-1'), f's{n}')
    fixed_clock.advance(seconds=3 * 3600)  # long past every idle timeout: overdue, yet live
    assert lc.pool.run(lc.index.retry_after(lc.now_ms())) == lc.settings.idle_interval_s
    fixed_clock.advance(seconds=-3 * 3600 + 60)  # one minute in: the oldest idles out in idle_ttl_s - 60 (+ a sweep)
    expected = lc.settings.idle_ttl_s - 60 + lc.settings.idle_interval_s
    assert lc.pool.run(lc.index.retry_after(lc.now_ms())) == expected


def test_a_session_touched_twice_in_one_millisecond_is_live_both_times(lc: Lifecycle) -> None:
    lc.activate(lc.reserve('api-1'), 's1')
    lc.pool.clock.advance(ms=5)  # type: ignore[attr-defined]
    assert lc.touch('s1') is True
    assert lc.touch('s1') is True  # the stamp did not move (same millisecond), but the session is live
    assert lc.touch_many(['s1', 's1', 'gone']) == 2
    assert lc.touch('gone') is False
