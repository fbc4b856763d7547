"""Coalesced activity stamps: `touch()` returns at once; stamps are merged per session and sent as one
`ZADD XX GT` every `interval_s` (and on flush or close), each at the time it was made.

A stamp is applied at most one interval (plus one round trip) after it was made; sweeps run every few
seconds at least, so the idle deadline it moves is never judged on a stale stamp by more than that. `XX` never
revives a session that left the pool meanwhile and `GT` never moves activity back, so a late batch is as safe
as an immediate touch. A flush that fails (Redis down) puts its stamps back, merged with newer ones: none is
lost while the process runs, and `close()` sends what is pending. More than `max_pending` sessions waiting is
backpressure: the caller that finds the buffer full sends it itself, so memory stays bounded. A stamp made with
a tenure (see `Lifecycle`) goes through a script that drops it if that copy of the session is stale.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from lifecycle import validate
from lifecycle.background import AsyncRepeater, Repeater
from lifecycle.errors import LifecycleError
from lifecycle.pool.calls import Steps
from lifecycle.pool.executor import AsyncExecutor, Executor
from lifecycle.pool.sessions import SessionIndex

log = logging.getLogger(__name__)
RETRY_S = 1.0  # while Redis is down, the flusher tries (and logs) once a second, not every interval
CHUNK = 10_000  # sessions per ZADD: one command stays short on the server however many are pending


Pending = dict[str, tuple[int, int | None]]  # session id -> (at_ms, the tenure it was stamped with, or None)


def keep_latest(pending: Pending, session_id: str, at_ms: int, tenure: int | None) -> None:
    """Record a stamp in `pending`, merged with one of the session waiting there: of two lives (two tenures), the
    later life's (a stale copy's stamp never displaces the current life's, which its flush would refuse); else
    the later time, fenced only if both stamps were (one without a tenure passes any fence: a stale copy's
    merged into it only delays an idle eviction, where its refusal would lose the untenured stamp)."""
    waiting = pending.get(session_id)
    if waiting is None:
        pending[session_id] = (at_ms, tenure)
        return
    waiting_at, waiting_tenure = waiting
    if tenure is not None and waiting_tenure is not None and tenure != waiting_tenure:
        if tenure > waiting_tenure:
            pending[session_id] = (at_ms, tenure)
        return
    pending[session_id] = (at_ms if at_ms > waiting_at else waiting_at, tenure if waiting_tenure is not None else None)


def send(index: SessionIndex, stamps: list[tuple[str, int, int | None]]) -> Steps[int]:
    """Both stampers' flush, as steps: the stamps in ZADDs of at most CHUNK; how many sessions' activity moved.
    Sending a chunk again after a failure is harmless: `GT` leaves a stamp already applied where it is."""
    moved = 0
    for start in range(0, len(stamps), CHUNK):
        moved += yield index.stamp(stamps[start : start + CHUNK])
    return moved


class Stamper:
    """Coalesces `touch(session_id)` for a sync client: a daemon thread flushes every `interval_s`."""

    def __init__(self, pool: Executor, index: SessionIndex, interval_s: float, max_pending: int = 100_000) -> None:
        self.pool, self.index = pool, index
        self.max_pending = max_pending
        self._pending: Pending = {}
        self._lock = threading.Lock()  # guards _pending
        self._sending = threading.Lock()  # one flush at a time, so a batch is never overtaken by a later one
        self._repeater = Repeater('lifecycle-stamper', interval_s, self._beat, retry_s=RETRY_S).start()

    def _beat(self) -> None:
        self.flush()

    def touch(self, session_id: str, tenure: int | None = None) -> None:
        if type(session_id) is not str or session_id not in self._pending:  # one waiting was checked as it came
            validate.identifier('session_id', session_id)
        if tenure is not None:
            validate.optional_token('tenure', tenure)
        at_ms = self.pool.now_ms()
        with self._lock:
            keep_latest(self._pending, session_id, at_ms, tenure)
            full = len(self._pending) >= self.max_pending
        if full:
            self.flush()  # backpressure: the caller pays for the round trip

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Send every pending stamp now; returns how many sessions' activity moved. Raises (after putting the
        stamps back) if Redis cannot take them."""
        with self._sending:
            with self._lock:
                stamps = [(session_id, at_ms, tenure) for session_id, (at_ms, tenure) in self._pending.items()]
                self._pending = {}
            try:
                return self.pool.do(send(self.index, stamps))
            except LifecycleError:
                with self._lock:
                    for stamp in stamps:
                        keep_latest(self._pending, *stamp)
                raise

    def close(self) -> None:
        """Stop the flusher and send what is pending (no stamp lost on a clean shutdown)."""
        self._repeater.stop()
        try:
            self.flush()
        except LifecycleError as exc:
            log.warning('%d activity stamps lost at close: %s', self.pending(), exc)


class AsyncStamper:
    """The same for the async client: an asyncio task flushes every `interval_s`."""

    def __init__(self, pool: AsyncExecutor, index: SessionIndex, interval_s: float, max_pending: int = 100_000) -> None:
        self.pool, self.index = pool, index
        self.max_pending = max_pending
        self._pending: Pending = {}
        self._sending = asyncio.Lock()
        self._repeater = AsyncRepeater('lifecycle-stamper', interval_s, self._beat, retry_s=RETRY_S).start()

    async def _beat(self) -> None:
        await self.flush()

    async def touch(self, session_id: str, tenure: int | None = None) -> None:
        if type(session_id) is not str or session_id not in self._pending:  # one waiting was checked as it came
            validate.identifier('session_id', session_id)
        if tenure is not None:
            validate.optional_token('tenure', tenure)
        keep_latest(self._pending, session_id, await self.pool.now_ms(), tenure)
        if len(self._pending) >= self.max_pending:
            await self.flush()

    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        async with self._sending:
            stamps = [(session_id, at_ms, tenure) for session_id, (at_ms, tenure) in self._pending.items()]
            self._pending = {}
            try:
                return await self.pool.do(send(self.index, stamps))
            except (LifecycleError, asyncio.CancelledError):
                for stamp in stamps:
                    keep_latest(self._pending, *stamp)
                raise

    async def close(self) -> None:
        await self._repeater.stop()
        try:
            await self.flush()
        except LifecycleError as exc:
            log.warning('%d activity stamps lost at close: %s', self.pending(), exc)
