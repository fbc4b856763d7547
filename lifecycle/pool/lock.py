"""sweep_lock(): one sweep of a kind at a time, on redis-py's Lock (non-blocking, extended per batch)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from lifecycle.errors import LifecycleError

log = logging.getLogger(__name__)


class LockLost(LifecycleError):
    """The sweep lock expired or changed hands during a sweep; the sweep stopped."""


class SweepLock:
    """A held sweep lock; `extend()` between batches keeps it for another `timeout_s`."""

    def __init__(self, lock: Lock, timeout_s: float) -> None:
        self._lock = lock
        self.timeout_s = timeout_s

    def extend(self) -> None:
        try:
            self._lock.extend(self.timeout_s, replace_ttl=True)
        except LockError as exc:
            raise LockLost(f'sweep lock {self._lock.name!r} lost mid-sweep') from exc


@contextmanager
def sweep_lock(client: redis.Redis, name: str, timeout_s: float) -> Iterator[SweepLock | None]:
    """Yield the lock if it was free, else None (a busy lock is an ordinary outcome, not an error)."""
    lock = client.lock(name, timeout=timeout_s, blocking=False, thread_local=False)
    if not lock.acquire(blocking=False):
        yield None
        return
    try:
        yield SweepLock(lock, timeout_s)
    finally:
        try:
            if lock.owned():
                lock.release()
        except (LockError, redis.ConnectionError):
            log.warning('sweep lock %s not released; it expires in at most %.0f s', name, timeout_s)
