"""Appends racing finishes and pruning on the real server: no orphaned streams, no frame on a dead run."""

from __future__ import annotations

import contextlib
import random
import threading
from typing import Any

from lifecycle import Lifecycle
from lifecycle.errors import RunStateError
from lifecycle.jobs.runs import RunStatus
from tests.conftest import SettingsFactory

RUNS = [f'run-{i}' for i in range(12)]


def test_concurrent_appends_while_runs_finish_restart_and_are_pruned(
    make_settings: SettingsFactory, real_redis: Any
) -> None:
    lc = Lifecycle(make_settings(max_finished_runs=3, max_events_per_run=50))
    for run_id in RUNS:
        lc.runs.start(run_id)
    stop = threading.Event()
    appended: dict[str, int] = {}
    refused: list[int] = []
    errors: list[BaseException] = []

    def append_forever(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                run_id = rng.choice(RUNS)
                try:
                    lc.runs.append(run_id, {'by': seed})
                    appended[run_id] = appended.get(run_id, 0) + 1
                except RunStateError:
                    refused.append(seed)
        except BaseException as exc:
            errors.append(exc)

    appenders = [threading.Thread(target=append_forever, args=(seed,)) for seed in range(4)]
    for thread in appenders:
        thread.start()
    rng = random.Random(99)
    for _ in range(200):
        run_id = rng.choice(RUNS)
        lc.runs.finish(run_id, rng.choice([RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED]))
        if rng.random() < 0.5:
            with contextlib.suppress(RunStateError):  # it was running
                lc.runs.start(rng.choice(RUNS))
        lc.runs.prune()
    stop.set()
    for thread in appenders:
        thread.join(30)

    assert errors == []
    assert refused, 'no append ever met a finished run: the race was not exercised'
    assert sum(appended.values()) > 100
    assert_every_run_kept_dropped_or_running(lc, real_redis)
    lc.disconnect()


def assert_every_run_kept_dropped_or_running(lc: Lifecycle, real_redis: Any) -> None:
    k = lc.index.keys
    terminal = set(real_redis.zrange(k.runs_terminal, 0, -1))
    assert len(terminal) <= 3
    for run_id in RUNS:
        status = real_redis.hget(k.run(run_id), 'status')
        if real_redis.exists(k.run_events(run_id)):
            assert status is not None, f'{run_id}: a stream outlived its run'
        if run_id in terminal:
            assert status in {'completed', 'failed', 'cancelled'}
        elif status is not None:
            assert status == 'running', f'{run_id}: finished but neither kept nor dropped'
        assert real_redis.xlen(k.run_events(run_id)) <= 50
