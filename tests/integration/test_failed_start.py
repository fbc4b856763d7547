"""A reservation whose sandbox failed to start: `release(reservation, failed=True)` gives its slot back and
counts it once, through both clients, on real Redis; the exporter shows the count."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aredis
from prometheus_client.registry import CollectorRegistry

from lifecycle import AsyncLifecycle, FixedClock, InvalidArgument, Lifecycle, Settings
from lifecycle.ops.metrics import PoolCollector
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.integration


def failed_starts(lc: Lifecycle) -> int:
    registry = CollectorRegistry()
    registry.register(PoolCollector(lc))
    return int(registry.get_sample_value('lifecycle_failed_starts_total') or 0)


def test_a_failed_start_gives_the_slot_back_and_is_counted_once(settings: Settings, real_redis: object) -> None:
    lc = Lifecycle(settings, clock=FixedClock())
    full = [lc.reserve('api-1') for _ in range(settings.max_sessions)]
    assert lc.release(full[0], failed=True) is True
    assert lc.release(full[0], failed=True) is False  # a resend: nothing held, nothing counted
    assert lc.release(full[1]) is True  # a plain release is not a failed start
    assert failed_starts(lc) == 1
    assert lc.stats().reserved == settings.max_sessions - 2
    lc.reserve('api-1')  # the slot came back
    with pytest.raises(InvalidArgument, match="failed must be True or False, got 'yes'"):
        lc.release(full[2], failed='yes')  # type: ignore[arg-type]
    assert lc.stats().reserved == settings.max_sessions - 1  # the bad call lost nothing


def test_the_async_client_counts_a_failed_start(settings: Settings, real_redis: object) -> None:
    async def run() -> None:
        client = aredis.Redis.from_url(REDIS_URL, decode_responses=True)
        async with AsyncLifecycle(settings, redis_client=client, clock=FixedClock()) as lc:
            reservation = await lc.reserve('api-1')
            assert await lc.release(reservation, failed=True) is True
            assert await lc.release(reservation, failed=True) is False

    asyncio.run(run())
    assert failed_starts(Lifecycle(settings)) == 1
