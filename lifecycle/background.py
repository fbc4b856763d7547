"""Repeaters: call a function every interval in the background (a thread, or an asyncio task)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Repeater:
    """Call `beat` every `interval_s` on a daemon thread until `stop()`; a failing beat is logged, not fatal."""

    def __init__(self, name: str, interval_s: float, beat: Callable[[], None], retry_s: float | None = None) -> None:
        self._interval_s = interval_s
        self._retry_s = interval_s if retry_s is None else retry_s
        self._beat = beat
        self._stopped = threading.Event()
        # Daemon: a forgotten heartbeat must never keep the process alive.
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> Repeater:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _loop(self) -> None:
        wait_s = self._interval_s
        while not self._stopped.wait(wait_s):
            try:
                self._beat()
                wait_s = self._interval_s
            except Exception:
                log.warning('%s: beat failed; retrying in %.1f s', self._thread.name, self._retry_s, exc_info=True)
                wait_s = self._retry_s


class AsyncRepeater:
    """Await `beat()` every `interval_s` in an asyncio task until `stop()`."""

    def __init__(
        self, name: str, interval_s: float, beat: Callable[[], Awaitable[None]], retry_s: float | None = None
    ) -> None:
        self._name = name
        self._interval_s = interval_s
        self._retry_s = interval_s if retry_s is None else retry_s
        self._beat = beat
        self._task: asyncio.Task[None] | None = None

    def start(self) -> AsyncRepeater:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=self._name)
        return self

    async def stop(self) -> None:
        task = self._task
        # wait(), not await: the task's own CancelledError stays inside it, while a cancellation of the caller
        # still propagates (teardown must never swallow a shutdown). Cancelled again until it ends: a beat may
        # swallow one cancellation (a library that catches it), and the loop must end all the same.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1)

    async def _loop(self) -> None:
        wait_s = self._interval_s
        while True:
            await asyncio.sleep(wait_s)
            try:
                await self._beat()
                wait_s = self._interval_s
            except Exception:
                log.warning('%s: beat failed; retrying in %.1f s', self._name, self._retry_s, exc_info=True)
                wait_s = self._retry_s
