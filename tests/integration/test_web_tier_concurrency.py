"""The concurrency a web tier really has: hundreds of calls at once wait for a connection, never fail."""

from __future__ import annotations

import asyncio
import threading

import pytest
import redis

from lifecycle import AsyncLifecycle, Lifecycle, LifecycleError
from tests.conftest import SettingsFactory


@pytest.fixture
def pool_settings(make_settings: SettingsFactory, real_redis: redis.Redis) -> SettingsFactory:
    return make_settings  # real_redis: the test's keys are deleted afterwards


def test_500_concurrent_async_calls_all_succeed_with_the_default_client(pool_settings: SettingsFactory) -> None:
    settings = pool_settings(max_sessions=1000)  # the default pool: 100 connections for 500 calls

    async def scenario() -> list[object]:
        async with AsyncLifecycle(settings) as lc:
            held: list[object] = list(
                await asyncio.gather(*(lc.reserve(f'api-{i % 7}') for i in range(500)), return_exceptions=True)
            )
            stats = await lc.stats()
            assert stats.reserved == sum(1 for r in held if not isinstance(r, BaseException))
            return held

    results = asyncio.run(scenario())
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], failures[:3]


def test_more_threads_than_connections_wait_for_one(pool_settings: SettingsFactory) -> None:
    settings = pool_settings(max_sessions=1000, redis_max_connections=4)
    lc = Lifecycle(settings)
    errors: list[LifecycleError] = []

    def work() -> None:
        for _ in range(20):
            try:
                lc.release(lc.reserve('api-1'))
            except LifecycleError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert lc.stats().reserved == 0
    lc.disconnect()
