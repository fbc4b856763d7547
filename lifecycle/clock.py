"""Clocks: lifecycle time is Redis server time, in integer epoch milliseconds."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the time in epoch milliseconds."""

    def now_ms(self) -> int: ...


class FixedClock:
    """A clock that moves only when told to; for tests."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self._now_ms = now_ms

    def now_ms(self) -> int:
        return self._now_ms

    def advance(self, seconds: float = 0, ms: int = 0) -> None:
        self._now_ms += int(seconds * 1000) + ms


class SystemClock:
    """This host's wall clock; fine for one host, wrong across hosts whose clocks drift."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class RedisClock:
    """Redis server time: an offset learned from `TIME`, applied to this host's monotonic clock.

    Replicas and workers on different hosts then agree on one clock, and a jump of the local wall
    clock changes nothing. The owner calls `observe()` with a `TIME` reply whenever `needs_sync()`.
    """

    def __init__(self, refresh_s: float = 60) -> None:
        self._refresh_ns = int(refresh_s * 1e9)
        self._offset_ns: int | None = None
        self._learned_at_ns = 0
        self._lock = threading.Lock()

    def needs_sync(self) -> bool:
        return self._offset_ns is None or time.monotonic_ns() - self._learned_at_ns >= self._refresh_ns

    def observe(self, server_time: tuple[int, int], sent_ns: int, received_ns: int) -> None:
        """Learn the offset from a `TIME` reply (seconds, microseconds) sent and received at these monotonic times."""
        server_ns = server_time[0] * 1_000_000_000 + server_time[1] * 1_000
        # The server read its clock somewhere within the round trip: assume the middle.
        with self._lock:
            self._offset_ns = server_ns - (sent_ns + received_ns) // 2
            self._learned_at_ns = received_ns

    def fresh_ms(self) -> int | None:
        """`now_ms()` in one read of the monotonic clock (every activity stamp asks), or None if `needs_sync()`."""
        offset_ns, now_ns = self._offset_ns, time.monotonic_ns()
        if offset_ns is None or now_ns - self._learned_at_ns >= self._refresh_ns:
            return None
        return (now_ns + offset_ns) // 1_000_000

    def now_ms(self) -> int:
        if self._offset_ns is None:
            raise RuntimeError('RedisClock.now_ms() before the first observe()')
        return (time.monotonic_ns() + self._offset_ns) // 1_000_000
