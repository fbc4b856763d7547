"""sweep_lock(): one sweep of a kind at a time, on redis-py's Lock (non-blocking, extended per batch)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from lifecycle.errors import LifecycleError
from lifecycle.pool.executor import Executor

log = logging.getLogger(__name__)


class LockLost(LifecycleError):
    """The sweep lock expired or changed hands during a sweep; the sweep stopped."""


class SweepLock:
    """A held sweep lock; `extend()` between batches keeps it for another `timeout_s`."""

    def __init__(self, pool: Executor, lock: Lock, timeout_s: float) -> None:
        self._pool = pool
        self._lock = lock
        self.timeout_s = timeout_s

    def extend(self) -> None:
        try:
            with self._pool.translating():
                self._lock.extend(self.timeout_s, replace_ttl=True)
        except LockError as exc:
            raise LockLost(f'sweep lock {self._lock.name!r} lost mid-sweep') from exc


@contextmanager
def sweep_lock(pool: Executor, name: str, timeout_s: float) -> Iterator[SweepLock | None]:
    """Yield the lock if it was free, else None (a busy lock is an ordinary outcome, not an error)."""
    lock = pool.redis.lock(name, timeout=timeout_s, blocking=False, thread_local=False)
    with pool.translating():
        acquired = lock.acquire(blocking=False)
    if not acquired:
        yield None
        return
    try:
        yield SweepLock(pool, lock, timeout_s)
    finally:
        try:
            if lock.owned():
                lock.release()
        except (LockError, RedisError):
            log.warning('sweep lock %s not released; it expires in at most %.0f s', name, timeout_s)
