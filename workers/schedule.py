"""The beat schedule, built from settings: one entry per sweep kind."""

from __future__ import annotations

from typing import Any

from lifecycle.reaper.sweeps import SweepKind
from lifecycle.settings import Settings

SWEEP_TASKS = {
    SweepKind.IDLE: 'lifecycle.sweep_idle',
    SweepKind.LRU: 'lifecycle.sweep_lru',
    SweepKind.EXPIRED: 'lifecycle.sweep_expired',
    SweepKind.OWNER_LOST: 'lifecycle.sweep_owner_lost',
    SweepKind.WARNINGS: 'lifecycle.sweep_warnings',
    SweepKind.RECONCILE: 'lifecycle.reconcile',
    SweepKind.RUNS: 'lifecycle.sweep_runs',
    SweepKind.WORKTREES: 'lifecycle.sweep_worktrees',
    SweepKind.RETENTION: 'lifecycle.sweep_retention',
}


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every sweep every `<kind>_interval_s`. No message expiry: Celery would stamp it with beat's clock and judge it
    by the worker's, so a worker ahead by an interval would drop every sweep. Sweeps queued while the workers were
    down run once; the rest skip as duplicates, judged by Redis's clock (see `Sweeper.sweep`)."""
    return {f'lifecycle-{kind}': {'task': task, 'schedule': float(settings.interval_s(kind))}
            for kind, task in SWEEP_TASKS.items()}  # fmt: skip
