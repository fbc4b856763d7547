"""Bodies of the child processes that integration tests start, SIGKILL and watch."""

from __future__ import annotations

import random
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from lifecycle import CapacityExceeded, Lifecycle, Settings


def hammer_pool(settings: dict[str, Any], worker: int, seconds: float, results: Connection) -> None:
    """Hold up to 8 sessions at once, creating, turning and closing them as fast as possible."""
    lc = Lifecycle(Settings(**settings))
    rng = random.Random(worker)
    held: list[str] = []
    admitted = refused = 0
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        if len(held) >= 8 or (held and rng.random() < 0.3):
            lc.close(held.pop(rng.randrange(len(held))))
            continue
        try:
            reservation = lc.reserve(f'api-{worker}', tenant=rng.choice([None, 'acme', 'globex']))
        except CapacityExceeded:
            refused += 1
            continue
        admitted += 1
        if rng.random() < 0.2:
            lc.release(reservation)
            continue
        session_id = f'w{worker}-{n}'
        lc.activate(reservation, session_id, ttl_seconds=60)
        held.append(session_id)
        if rng.random() < 0.3:
            with lc.turn(session_id):
                lc.touch(session_id)
    for session_id in held:
        lc.close(session_id)
    results.send((admitted, refused))
    lc.disconnect()


def hold_reservations(settings: dict[str, Any], count: int, ready: Connection) -> None:
    """Take `count` reservations, report their lease expiries, then hang until killed."""
    lc = Lifecycle(Settings(**settings))
    ready.send([lc.reserve('doomed').expires_at_ms for _ in range(count)])
    time.sleep(3600)


def hold_turn(settings: dict[str, Any], session_id: str, ready: Connection) -> None:
    """Run a turn that never ends on its own (its heartbeat keeps renewing) until killed."""
    lc = Lifecycle(Settings(**settings))
    with lc.turn(session_id):
        ready.send('busy')
        time.sleep(3600)
    sys.exit(1)


def evict_once(settings: dict[str, Any], session_id: str, results: Connection) -> None:
    """One worker's eviction of one session (its settings may carry a crash_at point)."""
    from lifecycle.models import ReapReason
    from lifecycle.reaper.eviction import Evictor

    lc = Lifecycle(Settings(**settings))
    evictor = Evictor(lc.pool, lc.store, lc.driver)
    result = evictor.evict(session_id, ReapReason.IDLE, 2**50, 0)
    results.send((result.outcome.value, result.detail))


def replica_through_a_loss(
    settings: dict[str, Any], worker: int, stop: Any, held: Any, guard: Any, counts: Any
) -> None:
    """An API replica across a Redis restart: it admits sessions (each checkpointed at once, so restorable),
    touches, turns, checkpoints and closes them, and records what every call told it. `held[worker]` is the
    sessions whose sandboxes it runs: updated after an activation, and before a close (the sandbox stops first)."""
    from lifecycle.errors import BackendUnavailable, LifecycleError, PoolRecovering

    replica = _Replica(Lifecycle(Settings(**settings)), worker, held, guard)
    while not stop.is_set():
        try:
            replica.step()
            time.sleep(0.005)
        except CapacityExceeded:
            replica.count('refused: full')
            time.sleep(0.02)
        except PoolRecovering:
            replica.count('refused: recovering')
            time.sleep(0.05)
        except BackendUnavailable:
            replica.count('redis unavailable')
            time.sleep(0.05)
        except LifecycleError as exc:
            replica.count(f'other: {type(exc).__name__}: {exc}'[:160])
    counts.put((worker, replica.tally, replica.mine))
    replica.lc.disconnect()


class _Replica:
    def __init__(self, lc: Lifecycle, worker: int, held: Any, guard: Any) -> None:
        self.lc, self.worker, self.held, self.guard = lc, worker, held, guard
        self.rng = random.Random(worker)
        self.mine: list[str] = []
        self.tally: dict[str, int] = {}
        self.n = 0

    def count(self, what: str) -> None:
        self.tally[what] = self.tally.get(what, 0) + 1

    def running(self, sessions: list[str]) -> None:
        """Publish the sandboxes this replica runs (under the guard the watcher reads them all with)."""
        with self.guard:
            self.held[self.worker] = list(sessions)

    def step(self) -> None:
        self.n += 1
        if len(self.mine) < 6 and self.rng.random() < 0.4:
            self.admit()
        elif self.mine:
            self.use(self.rng.choice(self.mine), self.rng.random())

    def admit(self) -> None:
        reservation = self.lc.reserve(f'api-{self.worker}')
        session_id = f'r{self.worker}-{self.n}'
        self.lc.activate(reservation, session_id, ttl_seconds=600)
        self.mine.append(session_id)
        self.running(self.mine)
        self.lc.checkpoint(session_id, {'n': self.n})
        self.count('admitted')

    def use(self, session_id: str, action: float) -> None:
        if action < 0.1:
            self.running([s for s in self.mine if s != session_id])
            try:
                self.lc.close(session_id)
            except Exception:
                self.running(self.mine)  # not closed: its sandbox runs on
                raise
            self.mine.remove(session_id)
            self.count('closed')
        elif action < 0.5:
            with self.lc.turn(session_id):
                pass
            self.lc.checkpoint(session_id, {'n': self.n})
            self.count('turned')
        elif self.lc.touch(session_id):
            self.count('touched')
        else:  # False only says the stamp did not move: it must still be live, never silently gone
            info = self.lc.status(session_id)
            live = info is not None and info.state.value == 'live'
            self.count('touched' if live else f'SILENT touch() False: {session_id} {info.state if info else None}')
