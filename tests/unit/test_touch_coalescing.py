"""Coalesced touches (`touch_flush_ms` > 0): merged per session, each at its own time, none lost on close or
while Redis is down, bounded by backpressure; on fakeredis and on the real server."""

from __future__ import annotations

import asyncio
import threading
import time

import fakeredis
import pytest
import redis

from lifecycle import AsyncLifecycle, BackendUnavailable, FixedClock, InvalidArgument, Lifecycle, Settings
from lifecycle.pool.stamper import Stamper
from tests.conftest import SettingsFactory


def live_scores(lc: Lifecycle) -> dict[str, int]:
    pairs: list[tuple[str, float]] = lc.redis.zrange(lc.index.keys.live, 0, -1, withscores=True)  # type: ignore[assignment]
    return {str(member): int(score) for member, score in pairs}


def open_sessions(lc: Lifecycle, count: int) -> list[str]:
    ids = [f's{i}' for i in range(count)]
    for session_id in ids:
        lc.activate(lc.reserve('api-1'), session_id)
    return ids


@pytest.fixture
def coalescing(make_settings: SettingsFactory, redis_client: redis.Redis) -> Lifecycle:
    settings = make_settings(max_sessions=300, touch_flush_ms=60_000)  # the flusher never fires by itself here
    return Lifecycle(settings, redis_client=redis_client, clock=FixedClock())


def test_touches_return_at_once_and_go_out_merged_each_at_its_latest_time(coalescing: Lifecycle) -> None:
    lc, clock = coalescing, coalescing.pool.clock
    assert isinstance(clock, FixedClock)
    ids = open_sessions(lc, 200)
    before = live_scores(lc)
    latest: dict[str, int] = {}

    def stamp(offset: int) -> None:
        for step in range(5):
            for session_id in ids[offset::4]:
                lc.touch(session_id)
                latest[session_id] = clock.now_ms()
            clock.advance(ms=step + 1)

    threads = [threading.Thread(target=stamp, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert live_scores(lc) == before  # nothing sent yet: the touches only queued
    assert lc.flush_touches() == 200
    after = live_scores(lc)
    assert all(after[s] >= latest[s] - 15 and after[s] > before[s] for s in ids)  # each at a late stamp of its own
    lc.disconnect()


def test_no_stamp_is_lost_on_close_and_gt_xx_hold(coalescing: Lifecycle) -> None:
    lc, clock = coalescing, coalescing.pool.clock
    assert isinstance(clock, FixedClock)
    ids = open_sessions(lc, 50)
    lc.close('s0')  # not live any more: its stamp is dropped, never revives it
    clock.advance(seconds=5)
    for session_id in ids:
        lc.touch(session_id)
    stamped = clock.now_ms()
    redis_client = lc.redis
    lc.disconnect()  # sends what is pending
    check = Lifecycle(lc.settings, redis_client=redis_client, clock=clock)
    scores = live_scores(check)
    assert 's0' not in scores
    assert all(scores[s] == stamped for s in ids[1:])
    # An older coalesced stamp never moves activity back.
    clock.advance(seconds=-60)
    check2 = Lifecycle(lc.settings.model_copy(update={'touch_flush_ms': 60_000}), redis_client=redis_client,
                       clock=clock)  # fmt: skip
    check2.touch('s1')
    assert check2.flush_touches() == 0
    assert live_scores(check)['s1'] == stamped


def test_backpressure_bounds_what_waits_and_the_caller_sends_it(make_settings: SettingsFactory,
                                                                 redis_client: redis.Redis) -> None:  # fmt: skip
    lc = Lifecycle(make_settings(max_sessions=300, touch_flush_ms=60_000, touch_max_pending=10),
                   redis_client=redis_client, clock=FixedClock())  # fmt: skip
    ids = open_sessions(lc, 25)
    lc.pool.clock.advance(seconds=1)  # type: ignore[attr-defined]
    for session_id in ids:
        lc.touch(session_id)
        assert lc._stamper.pending() < 10
    assert lc._stamper.pending() == 5
    lc.disconnect()


def test_a_flush_that_fails_keeps_its_stamps_merged_with_newer_ones() -> None:
    server = fakeredis.FakeServer()
    settings = Settings(key_prefix='stamps', max_sessions=10)
    clock = FixedClock()
    lc = Lifecycle(settings, redis_client=fakeredis.FakeRedis(server=server, decode_responses=True), clock=clock)
    open_sessions(lc, 3)
    stamper = Stamper(lc.pool, lc.index, interval_s=3600)
    clock.advance(seconds=1)
    stamper.touch('s0')
    stamper.touch('s1')
    server.connected = False  # Redis goes away
    with pytest.raises(BackendUnavailable):
        stamper.flush()
    clock.advance(seconds=1)
    stamper.touch('s1')  # a newer stamp while down
    assert stamper.pending() == 2
    server.connected = True
    assert stamper.flush() == 2
    scores = live_scores(lc)
    assert (scores['s0'], scores['s1']) == (clock.now_ms() - 1000, clock.now_ms())
    stamper.close()
    lc.disconnect()


@pytest.mark.integration
def test_the_async_client_coalesces_too_and_sends_everything_on_disconnect(
    make_settings: SettingsFactory, real_redis: redis.Redis
) -> None:
    settings = make_settings(max_sessions=100, touch_flush_ms=60_000)
    clock = FixedClock()
    sync = Lifecycle(settings, redis_client=real_redis, clock=clock)
    ids = open_sessions(sync, 40)
    clock.advance(seconds=3)

    async def main() -> int:
        lc = AsyncLifecycle(settings, clock=clock)
        for session_id in ids:
            assert await lc.touch(session_id) is True
        sent = await lc.flush_touches()
        clock.advance(seconds=1)
        await lc.touch('s0')
        await lc.disconnect()
        return sent

    assert asyncio.run(main()) == 40
    scores = live_scores(sync)
    assert scores['s0'] == clock.now_ms()
    assert all(scores[s] == clock.now_ms() - 1000 for s in ids[1:])


def test_the_flusher_sends_stamps_by_itself(make_settings: SettingsFactory, redis_client: redis.Redis) -> None:
    clock = FixedClock()
    lc = Lifecycle(make_settings(touch_flush_ms=20), redis_client=redis_client, clock=clock)
    open_sessions(lc, 1)
    clock.advance(seconds=1)
    lc.touch('s0')
    deadline = time.monotonic() + 10
    while live_scores(lc)['s0'] != clock.now_ms():
        assert time.monotonic() < deadline, 'the flusher never sent the stamp'
        time.sleep(0.01)
    lc.disconnect()


def tenured_session(lc: Lifecycle) -> tuple[str, int, FixedClock]:
    """One session, its tenure, and the clock, 5 s after its activation."""
    clock = lc.pool.clock
    assert isinstance(clock, FixedClock)
    [session_id] = open_sessions(lc, 1)
    status = lc.status(session_id)
    assert status is not None
    assert status.tenure is not None
    clock.advance(seconds=5)
    return session_id, status.tenure, clock


def test_a_stale_copy_s_later_stamp_never_displaces_the_current_life_s(coalescing: Lifecycle) -> None:
    """Two handlers of one replica touch s0: one with its current tenure, then one still holding a copy from
    before s0 was restored (a lower tenure), later. The current life's stamp is the one sent (before: the stale
    one replaced it while both waited, and the flush refused it: s0's activity never moved)."""
    lc = coalescing
    session_id, tenure, clock = tenured_session(lc)
    current = clock.now_ms()
    lc.touch(session_id, tenure=tenure)
    clock.advance(seconds=1)
    lc.touch(session_id, tenure=tenure - 1)  # a stale copy's, later
    assert lc.flush_touches() == 1
    assert live_scores(lc)[session_id] == current


def test_an_untenured_stamp_is_never_displaced_by_a_stale_copy_s(coalescing: Lifecycle) -> None:
    """s0 is touched with its current tenure, then without one (a handler that does not carry it), then by a stale
    copy (a lower tenure), each later. The untenured stamp passes any fence, so it is sent, at the latest time
    seen (before: the stale one replaced it by its time, the flush refused it, and s0's activity stayed at its
    activation: an active session looked idle)."""
    lc = coalescing
    session_id, tenure, clock = tenured_session(lc)
    lc.touch(session_id, tenure=tenure)
    clock.advance(seconds=1)
    lc.touch(session_id)
    clock.advance(seconds=1)
    lc.touch(session_id, tenure=tenure - 1)  # a stale copy's, later still
    assert lc.flush_touches() == 1
    assert live_scores(lc)[session_id] == clock.now_ms()  # a stale stamp only delays an idle eviction


@pytest.mark.parametrize('bad', ['', 'has space', 'a|b', 'x' * 129, 7, None, ['s0'], b's0'], ids=repr)
def test_a_bad_id_is_refused_naming_it_even_beside_good_ones_waiting(coalescing: Lifecycle, bad: object) -> None:
    [good] = open_sessions(coalescing, 1)
    clock = coalescing.pool.clock
    assert isinstance(clock, FixedClock)
    clock.advance(ms=5)
    coalescing.touch(good)
    coalescing.touch(good)  # waiting: not checked again
    with pytest.raises(InvalidArgument, match='session_id'):
        coalescing.touch(bad)  # type: ignore[arg-type]
    assert coalescing._stamper.pending() == 1  # only the good one waits
    assert coalescing.flush_touches() == 1
    coalescing.disconnect()
