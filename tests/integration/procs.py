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
