from __future__ import annotations

import time

import pytest

from lifecycle import FixedClock, RedisClock


def test_fixed_clock_moves_only_when_advanced() -> None:
    clock = FixedClock(1_000)
    assert clock.now_ms() == 1_000
    clock.advance(seconds=1.5, ms=2)
    assert clock.now_ms() == 2_502


def test_redis_clock_applies_the_server_offset_to_the_local_monotonic_clock() -> None:
    clock = RedisClock(refresh_s=60)
    assert clock.needs_sync()
    assert clock.fresh_ms() is None
    with pytest.raises(RuntimeError):
        clock.now_ms()
    now_ns = time.monotonic_ns()
    # The server says it is 2001-09-09T01:46:40.5Z at the middle of a 2 ms round trip.
    clock.observe((1_000_000_000, 500_000), now_ns - 1_000_000, now_ns + 1_000_000)
    assert not clock.needs_sync()
    elapsed_ms = (time.monotonic_ns() - now_ns) // 1_000_000
    assert 1_000_000_000_500 <= clock.now_ms() <= 1_000_000_000_500 + elapsed_ms + 1
    fresh = clock.fresh_ms()
    assert fresh is not None
    assert 1_000_000_000_500 <= fresh <= clock.now_ms()


def test_redis_clock_asks_for_a_refresh_after_its_interval() -> None:
    clock = RedisClock(refresh_s=0.001)
    now_ns = time.monotonic_ns()
    clock.observe((1, 0), now_ns, now_ns)
    time.sleep(0.002)
    assert clock.needs_sync()
    assert clock.fresh_ms() is None  # the executor learns the offset again before it stamps
