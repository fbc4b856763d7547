"""AsyncLifecycle behaves as Lifecycle does, on fakeredis and on the real server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import fakeredis
import pytest
import redis.asyncio as aredis

from lifecycle import (
    AsyncLifecycle,
    CapacityExceeded,
    FixedClock,
    InvalidTTL,
    ReservationLost,
    SessionNotLive,
    SessionReaping,
    Settings,
)
from lifecycle.pool import servers
from lifecycle.pool.calls import Call
from tests.conftest import REDIS_URL, SettingsFactory

Scenario = Callable[[AsyncLifecycle, FixedClock], Awaitable[None]]


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(max_sessions=5, worktree_root='/srv/worktrees')


def async_runner(
    request: pytest.FixtureRequest, settings: Settings, fixed_clock: FixedClock
) -> Callable[[Scenario], None]:
    url = REDIS_URL
    if request.param == 'real':
        request.getfixturevalue('real_redis')  # skips or fails when Redis is down, and cleans our keys up
    elif request.param == 'private':
        request.getfixturevalue('private_redis')  # database 1 of the private server, flushed around the test
        url = request.getfixturevalue('private_redis_url').rsplit('/', 1)[0] + '/1'

    def run(scenario: Scenario) -> None:
        async def main() -> None:
            client: Any
            if request.param == 'fake':
                client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
            elif request.param == 'real':  # the test Redis, or the test Redis Cluster
                client = servers.connect_async(settings, decode_responses=True)
            else:
                client = aredis.Redis.from_url(url, decode_responses=True)
            async with AsyncLifecycle(settings, redis_client=client, clock=fixed_clock) as lc:
                await scenario(lc, fixed_clock)

        asyncio.run(main())

    return run


@pytest.fixture(params=['fake', pytest.param('real', marks=pytest.mark.integration)])
def run_async(
    request: pytest.FixtureRequest, settings: Settings, fixed_clock: FixedClock
) -> Callable[[Scenario], None]:
    return async_runner(request, settings, fixed_clock)


@pytest.fixture(params=['fake', pytest.param('private', marks=pytest.mark.integration)])
def run_async_flushable(
    request: pytest.FixtureRequest, settings: Settings, fixed_clock: FixedClock
) -> Callable[[Scenario], None]:
    """Like run_async, on a server of the test's own: the scenario may flush its scripts."""
    return async_runner(request, settings, fixed_clock)


def test_async_reserve_activate_and_the_cap(run_async: Callable[[Scenario], None]) -> None:
    async def scenario(lc: AsyncLifecycle, clock: FixedClock) -> None:
        first = await lc.reserve('api-1', token='t-1')
        assert await lc.reserve('api-1', token='t-1') == first
        info = await lc.activate(first, 'chat-1', ttl_seconds=60)
        assert info.expires_at_ms == clock.now_ms() + 60_000
        held = await asyncio.gather(*(lc.reserve('api-1') for _ in range(4)))
        with pytest.raises(CapacityExceeded) as refused:
            await lc.reserve('api-2')
        assert (refused.value.live, refused.value.reserved, refused.value.cap) == (1, 4, 5)
        with pytest.raises(InvalidTTL):
            await lc.activate(held[0], 'chat-2', ttl_seconds=0)
        assert await lc.release(held[0])
        with pytest.raises(ReservationLost):
            await lc.activate(held[0], 'chat-2')
        stats = await lc.stats()
        assert (stats.live, stats.reserved, stats.slots) == (1, 3, 4)
        assert await lc.redis.hget(lc.index.keys.counters, 'refused:pool') == '1'

    run_async(scenario)


def test_async_touch_status_close_and_heartbeat(run_async: Callable[[Scenario], None]) -> None:
    async def scenario(lc: AsyncLifecycle, clock: FixedClock) -> None:
        await lc.activate(await lc.reserve('api-1'), 'chat-1')
        clock.advance(seconds=3)
        assert await lc.touch('chat-1')
        assert await lc.touch_many(['chat-1', 'ghost']) == 1  # same instant: chat-1 is live (stamped already)
        info = await lc.status('chat-1')
        assert info is not None
        assert info.last_active_ms == clock.now_ms()
        await lc.heartbeat('api-1')
        assert await lc.close('chat-1')
        assert await lc.status('chat-1') is None
        assert (await lc.stats()).slots == 0

    run_async(scenario)


def test_async_turn_is_busy_during_the_body_and_refuses_dead_sessions(run_async: Callable[[Scenario], None]) -> None:
    async def scenario(lc: AsyncLifecycle, clock: FixedClock) -> None:
        await lc.activate(await lc.reserve('api-1'), 'chat-1')
        async with lc.turn('chat-1') as turn:
            assert (await lc.status('chat-1')).busy  # type: ignore[union-attr]
        assert (turn.seq, turn.finished_seq) == (0, 1)
        assert not (await lc.status('chat-1')).busy  # type: ignore[union-attr]
        with pytest.raises(SessionNotLive):
            async with lc.turn('ghost'):
                pass
        await lc.redis.zadd(lc.index.keys.reaping, {'chat-1': clock.now_ms() + 1000})
        with pytest.raises(SessionReaping):
            async with lc.turn('chat-1'):
                pass

    run_async(scenario)


def test_cancelling_a_turn_still_records_its_end_and_propagates(run_async: Callable[[Scenario], None]) -> None:
    async def scenario(lc: AsyncLifecycle, clock: FixedClock) -> None:
        await lc.activate(await lc.reserve('api-1'), 'chat-1')
        entered = asyncio.Event()

        async def serve_turn() -> None:
            async with lc.turn('chat-1'):
                entered.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(serve_turn())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        info = await lc.status('chat-1')
        assert info is not None
        assert (info.busy, info.turn_seq) == (False, 1)

    run_async(scenario)


def test_a_turn_cancelled_by_an_anyio_cancel_scope_still_records_its_end(
    run_async: Callable[[Scenario], None],
) -> None:
    # Regression: Starlette cancels a disconnected client's handler through anyio, whose cancel scope cancels
    # every await again; the turn's cleanup awaited before scheduling the end, so the end was never recorded
    # (the user's message was no turn, and its busy lease lingered).
    async def scenario(lc: AsyncLifecycle, clock: FixedClock) -> None:
        await lc.activate(await lc.reserve('api-1'), 'chat-1')
        with anyio.CancelScope() as scope:
            async with lc.turn('chat-1'):
                scope.cancel()
                await anyio.sleep(3600)
        assert scope.cancelled_caught
        for _ in range(200):  # the end is recorded in the background, the cancellation having propagated
            info = await lc.status('chat-1')
            assert info is not None
            if not info.busy:
                break
            await asyncio.sleep(0.01)
        assert info is not None
        assert (info.busy, info.turn_seq) == (False, 1)

    run_async(scenario)


def test_async_runs_and_worktree_registration(run_async: Callable[[Scenario], None]) -> None:
    async def scenario(lc: AsyncLifecycle, clock: FixedClock) -> None:
        await lc.runs.start('r1', 'chat-1')
        first = await lc.runs.append('r1', {'n': 1})
        await lc.runs.append('r1', {'n': 2})
        assert [f.data for f in await lc.runs.replay('r1', after=first)] == [{'n': 2}]
        assert await lc.runs.finish('r1', 'completed') is True
        assert await lc.runs.finish('r1', 'failed') is False
        info = await lc.runs.info('r1')
        assert info is not None
        assert info.finished_ms == clock.now_ms()
        assert await lc.register_worktree('chat-1', '/srv/worktrees/./chat-1') == '/srv/worktrees/chat-1'
        assert await lc.redis.hget(lc.index.keys.worktrees, '/srv/worktrees/chat-1') == 'chat-1'

    run_async(scenario)


def test_async_calls_go_on_after_the_server_forgets_its_scripts(
    run_async_flushable: Callable[[Scenario], None],
) -> None:
    async def scenario(lc: AsyncLifecycle, clock: FixedClock) -> None:
        held = await lc.reserve('api-1')
        await lc.redis.script_flush()
        assert await lc.release(held) is True
        await lc.activate(await lc.reserve('api-1'), 's1')
        assert (await lc.stats()).live == 1

    run_async_flushable(scenario)


def test_the_async_executor_pipelines_scripts_and_loads_what_the_server_lacks(
    run_async_flushable: Callable[[Scenario], None],
) -> None:
    # Regression: queued on an asyncio pipeline, redis-py's script object was a coroutine never awaited, so a
    # batch with a script failed with a raw ValueError.
    async def scenario(lc: AsyncLifecycle, clock: FixedClock) -> None:
        await lc.activate(await lc.reserve('api-1'), 'chat-1')
        clock.advance(seconds=1)
        now = await lc.now_ms()
        batch: list[Call[Any]] = [lc.index.stats(now), lc.index.touch(['chat-1'], now)]
        stats, touched = await lc.pool.run_many(batch)
        assert (stats.live, touched) == (1, 1)
        await lc.redis.script_flush()  # a restarted server: the next batch finds no script
        [stats] = await lc.pool.run_many([lc.index.stats(now)])
        assert stats.live == 1

    run_async_flushable(scenario)
