"""A reaper assembled in-process on real Redis and a store (the MongoDB-wire server, or its in-memory twin): the
evictor and sweeps a worker runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pymongo

from lifecycle import FixedClock, Lifecycle, Settings
from lifecycle.policy import Order
from lifecycle.reaper.eviction import EvictionResult, Evictor
from lifecycle.reaper.sweeps import Sweeper, SweepKind, SweepReport
from lifecycle.sandboxes import NoopDriver, SandboxDriver
from lifecycle.stores import SnapshotStore
from lifecycle.stores.memory import InMemorySnapshotStore
from lifecycle.stores.mongo import MongoSnapshotStore


@dataclass
class Reaper:
    lc: Lifecycle
    store: SnapshotStore | None
    evictor: Evictor
    sweeper: Sweeper
    clock: FixedClock
    results: list[EvictionResult] = field(default_factory=list)

    def sweep(self, kind: SweepKind, **kwargs: Any) -> SweepReport:
        """Run a sweep with its evictions inline (as a worker would run the tasks it fans out)."""
        return self.sweeper.sweep(kind, dedupe=False, **kwargs)

    def document(self, session_id: str) -> dict[str, Any] | None:
        assert self.store is not None
        found = self.store.load(session_id)
        return dict(found) if found is not None else None


def build_reaper(
    settings: Settings, clock: FixedClock | None = None, driver: SandboxDriver | None = None, store_kind: str = 'mongo'
) -> Reaper:
    clock = clock or FixedClock()
    store: SnapshotStore | None = None
    if settings.mongo_url is not None and store_kind == 'memory':
        store = InMemorySnapshotStore()
    elif settings.mongo_url is not None:
        store = MongoSnapshotStore(settings.mongo_url, settings.mongo_database, timeout_ms=settings.mongo_timeout_ms)
        store.ensure_indexes()
    lc = Lifecycle(settings, clock=clock, store=store, driver=driver or NoopDriver())
    evictor = Evictor(lc.pool, store, lc.driver)
    results: list[EvictionResult] = []

    def dispatch(orders: Sequence[Order]) -> None:
        for start in range(0, len(orders), settings.evict_batch_size):  # the batches a worker's tasks get
            results.extend(evictor.evict_many(orders[start : start + settings.evict_batch_size]))

    reaper = Reaper(lc, store, evictor, Sweeper(lc.pool, evictor, dispatch), clock, results)
    return reaper


def fail(admin: pymongo.MongoClient[dict[str, Any]], command: str, times: int = 1000, **data: Any) -> None:
    """Fail `command` the next `times` times: a retryable write is retried within its deadline, so fail many."""
    admin.admin.command('configureFailPoint', 'failCommand', mode={'times': times},
                        data={'failCommands': [command], **data})  # fmt: skip


FAILURES: dict[str, dict[str, Any]] = {
    'error': {'errorCode': 8},
    'write-concern': {'writeConcernError': {'code': 64, 'errmsg': 'waiting for replication timed out'}},
    'closed-connection': {'closeConnection': True},
    'max-time-expired': {'errorCode': 50},  # the write's deadline (maxTimeMS) passed: part of it may have applied
}
