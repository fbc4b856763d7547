"""The tasks: thin wrappers that run lifecycle's sweeps and evictions in a worker process."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from celery import current_app, shared_task

from lifecycle.client import Lifecycle
from lifecycle.errors import BackendUnavailable, PersistenceError
from lifecycle.models import ReapReason
from lifecycle.policy import Order
from lifecycle.reaper.eviction import EvictionResult, Evictor
from lifecycle.reaper.sweeps import Sweeper, SweepKind, SweepReport
from workers.app import settings_of

log = logging.getLogger(__name__)
# An eviction that meets Redis or MongoDB out (a restart, a failover) is sent again a little later (it is
# idempotent); one still out after these tries is left to the next sweep, which finds the session again.
RETRY_WHILE_OUT: dict[str, Any] = {
    'autoretry_for': (BackendUnavailable, PersistenceError),
    'retry_backoff': 2,
    'max_retries': 4,
}


class Runtime:
    """One process's clients, built on first use after fork (a pymongo client is not fork-safe)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lc = Lifecycle(settings_of(current_app))
        self.evictor = Evictor(self.lc.pool, self.lc.store, self.lc.driver)
        self.sweeper = Sweeper(self.lc.pool, self.evictor, dispatch_evictions)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = Runtime()
    return _runtime


def dispatch_evictions(orders: Sequence[Order]) -> None:
    """Fan the orders out as `lifecycle.evict_batch` tasks of `evict_batch_size` each, over one producer connection."""
    size = runtime().lc.settings.evict_batch_size
    with current_app.producer_or_acquire() as producer:
        for start in range(0, len(orders), size):
            batch = [[o.session_id, o.reason.value, o.bound, o.observed_ms] for o in orders[start : start + size]]
            evict_batch.apply_async(args=(batch,), producer=producer)


def label(result: EvictionResult) -> str:
    """'evicted', or 'kept:busy': what Flower shows of one eviction."""
    return f'{result.outcome}:{result.detail}' if result.detail else str(result.outcome)


def summary(report: SweepReport) -> dict[str, Any]:
    """What Flower shows as the task's result."""
    return {
        'ran': report.ran,
        'skipped': report.skipped,
        'ordered': report.ordered,
        'recovered': [f'{r.session_id}:{r.outcome}' for r in report.recovered],
        'notices': report.notices,
        'released_sandboxes': len(report.released_sandboxes),
        'drift': report.drift.describe() if report.drift else None,
        'rebuilt': dataclasses.asdict(report.rebuilt) if report.rebuilt else None,
        'dropped_runs': len(report.dropped_runs),
        'deleted_sessions': report.deleted_sessions,
        'worktrees': [f'{a.path}:{a.verdict}' for a in report.worktrees.actions] if report.worktrees else [],
        'duration_ms': report.duration_ms,
    }


def sweep(kind: SweepKind) -> dict[str, Any]:
    """One sweep; while Redis or MongoDB is out (a restart, a failover) it is skipped with one warning line, not
    a failed task with a traceback: beat sends the next one on schedule, and that one catches up."""
    try:
        return summary(runtime().sweeper.sweep(kind))
    except (BackendUnavailable, PersistenceError) as exc:
        log.warning('%s sweep skipped: %s', kind.value, exc)
        return {'ran': False, 'skipped': f'unavailable: {exc}'}


@shared_task(name='lifecycle.evict', acks_late=True, reject_on_worker_lost=True, **RETRY_WHILE_OUT)
def evict(session_id: str, reason: str, bound: int | str = 0, observed_ms: int = 0) -> str:
    """Evict one session if it is still due; idempotent, so a redelivery after a crash is safe."""
    result = runtime().evictor.evict(session_id, ReapReason(reason), bound, observed_ms)
    return label(result)


@shared_task(name='lifecycle.evict_batch', acks_late=True, reject_on_worker_lost=True, **RETRY_WHILE_OUT)
def evict_batch(orders: list[list[Any]]) -> dict[str, int]:
    """Evict each ordered session [session_id, reason, bound, observed_ms] that is still due.

    Idempotent, so a redelivery after a crash is safe; returns how many ended each way (for Flower).
    """
    batch = [
        Order.of(session_id, ReapReason(reason), bound, observed) for session_id, reason, bound, observed in orders
    ]
    results = runtime().evictor.evict_many(batch)
    return dict(Counter(label(result) for result in results))


@shared_task(name='lifecycle.sweep_idle')
def sweep_idle() -> dict[str, Any]:
    return sweep(SweepKind.IDLE)


@shared_task(name='lifecycle.sweep_lru')
def sweep_lru() -> dict[str, Any]:
    return sweep(SweepKind.LRU)


@shared_task(name='lifecycle.sweep_expired')
def sweep_expired() -> dict[str, Any]:
    return sweep(SweepKind.EXPIRED)


@shared_task(name='lifecycle.sweep_owner_lost')
def sweep_owner_lost() -> dict[str, Any]:
    return sweep(SweepKind.OWNER_LOST)


@shared_task(name='lifecycle.sweep_warnings')
def sweep_warnings() -> dict[str, Any]:
    return sweep(SweepKind.WARNINGS)


@shared_task(name='lifecycle.reconcile')
def reconcile() -> dict[str, Any]:
    return sweep(SweepKind.RECONCILE)


@shared_task(name='lifecycle.sweep_retention')
def sweep_retention() -> dict[str, Any]:
    return sweep(SweepKind.RETENTION)


@shared_task(name='lifecycle.sweep_runs')
def sweep_runs() -> dict[str, Any]:
    return sweep(SweepKind.RUNS)


@shared_task(name='lifecycle.sweep_worktrees')
def sweep_worktrees() -> dict[str, Any]:
    return sweep(SweepKind.WORKTREES)
