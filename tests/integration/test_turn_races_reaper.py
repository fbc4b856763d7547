"""A turn and an eviction released together by a barrier, many times: never a busy session evicted,
never a turn lost; the loser of the race gets a clear error and can restore."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from lifecycle import Lifecycle, SessionNotLive, SessionReaping, SessionState
from lifecycle.models import ReapReason
from lifecycle.reaper.eviction import EvictionResult, Evictor, Outcome
from tests.conftest import SettingsFactory

TRIALS = 60


def race_once(
    api: Lifecycle, evictor: Evictor, session_id: str, jitter: tuple[float, float]
) -> tuple[dict[str, Any], EvictionResult]:
    """Release a turn and an eviction of one session together; return how each ended."""
    barrier = threading.Barrier(2)
    turn: dict[str, Any] = {}
    evicted: list[EvictionResult] = []

    def run_turn() -> None:
        barrier.wait()
        time.sleep(jitter[0])
        try:
            with api.turn(session_id) as t:
                turn['entered'] = True
                time.sleep(0.002)
            turn['finished_seq'] = t.finished_seq
        except (SessionReaping, SessionNotLive) as exc:
            turn['refused'] = exc

    def run_eviction() -> None:
        barrier.wait()
        time.sleep(jitter[1])
        evicted.append(evictor.evict(session_id, ReapReason.IDLE, 2**50))

    threads = [threading.Thread(target=run_turn), threading.Thread(target=run_eviction)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return turn, evicted[0]


def test_a_turn_racing_the_reaper_never_loses_a_turn_or_evicts_a_busy_session(
    make_reaper_settings: SettingsFactory, real_redis: Any
) -> None:
    settings = make_reaper_settings(require_checkpoint=False)
    api, worker = Lifecycle(settings), Lifecycle(settings)
    evictor = Evictor(worker.pool, worker.store, worker.driver)
    rng = random.Random(7)
    tally = {'turn_first': 0, 'reaper_first': 0, 'turn_then_evicted': 0}
    try:
        for trial in range(TRIALS):
            session_id = f'race-{trial}'
            api.activate(api.reserve('api-1'), session_id)
            turn, result = race_once(api, evictor, session_id, (rng.random() * 0.003, rng.random() * 0.003))
            if 'entered' in turn:
                assert turn['finished_seq'] == 1, 'a turn that ran was lost'
                if result.outcome is Outcome.EVICTED:
                    # Only possible after the turn ended: the eviction captured the finished turn.
                    assert worker.store is not None
                    document = worker.store.load(session_id)
                    assert document is not None
                    assert document['turn_seq'] == 1, 'a busy session was evicted'
                    tally['turn_then_evicted'] += 1
                else:
                    assert (result.outcome, result.detail) == (Outcome.KEPT, 'busy')
                    tally['turn_first'] += 1
                    api.close(session_id)
            else:
                assert isinstance(turn['refused'], SessionReaping | SessionNotLive)
                assert result.outcome is Outcome.EVICTED
                restored = api.restore(session_id, 'api-1')  # the loser comes back
                assert restored.sandbox_reset
                assert restored.session.state is SessionState.LIVE
                api.close(session_id)
                tally['reaper_first'] += 1
            stats = api.stats()
            assert (stats.live, stats.reaping, stats.busy, stats.slots) == (0, 0, 0, 0)
    finally:
        api.disconnect()
        worker.disconnect()
    print('race outcomes:', tally)
    assert tally['turn_first'] + tally['turn_then_evicted'] > 0, tally
    assert tally['reaper_first'] > 0, tally
