"""Issue 18, hole 3: one clock judges every deadline. Worker, beat and API replica processes run with their wall
clocks shifted (libfaketime: the process's own clocks), and nothing may depend on
two of them agreeing: sweeps still run, idle sessions are reaped on time by Redis's clock, and a conversation's
messages keep their order."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from lifecycle import Lifecycle, Settings
from lifecycle.ops.embedded import owned_env
from tests.conftest import SettingsFactory
from tests.integration.conftest import Spawn, skewed, wait_for, worker_args


def run_replica(settings: Settings, offset_s: int, code: str) -> None:
    """Run `code` (with `lc`, a Lifecycle from the settings) in an API replica process whose clock is skewed."""
    program = 'from lifecycle import Lifecycle\nwith Lifecycle() as lc:\n' + ''.join(
        f'    {line}\n' for line in code.strip().splitlines()
    )
    done = subprocess.run([sys.executable, '-c', program], env={**owned_env(settings), **skewed(offset_s)},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_the_clock_is_skewed_here() -> None:
    """The tool works: a skewed process's wall clock is off by the offset."""
    done = subprocess.run([sys.executable, '-c', 'import time; print(time.time())'], env={**os.environ,
                          **skewed(300)}, capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    assert 290 < float(done.stdout) - time.time() < 310


def test_messages_keep_their_order_whatever_each_replicas_clock_says(make_reaper_settings: SettingsFactory) -> None:
    """A replica 30 s ahead checkpoints m1; the next owner, on a true clock, checkpoints m2 after it."""
    settings = make_reaper_settings()
    with Lifecycle(settings) as lc:
        lc.activate(lc.reserve('api-1'), 's1')
        run_replica(settings, 30, "lc.checkpoint('s1', {'turns': 0}, [{'id': 'm1', 'text': 'first'}])")
        lc.checkpoint('s1', {'turns': 0}, [{'id': 'm2', 'text': 'second'}])
        run_replica(settings, -300, "lc.checkpoint('s1', {'turns': 0}, [{'id': 'm3', 'text': 'third'}])")
        assert lc.store is not None
        assert [m['id'] for m in lc.store.messages('s1')] == ['m1', 'm2', 'm3']


@pytest.mark.timeout(180)
@pytest.mark.parametrize(('worker_s', 'beat_s', 'replica_s'), [(30, -30, 30), (-30, 30, -30), (300, -300, 300),
                                                               (-300, 300, -300)])  # fmt: skip
def test_sweeps_run_and_idle_sessions_are_reaped_on_time_with_skewed_clocks(
    make_reaper_settings: SettingsFactory, spawn: Spawn, broker: str, worker_s: int, beat_s: int, replica_s: int
) -> None:
    idle_ttl_s, interval_s, count = 4, 2, 5
    settings = make_reaper_settings(broker_url=broker, idle_ttl_s=idle_ttl_s, idle_interval_s=interval_s,
                                    warn_before_s=2, min_idle_s=1)  # fmt: skip
    spawn(settings, *worker_args('w1'), env=skewed(worker_s))
    spawn(settings, 'beat', env=skewed(beat_s))
    lc = Lifecycle(settings)
    counters = lc.index.keys.counters
    wait_for(lambda: lc.redis.hget(counters, 'sweep:idle') is not None, 60, 'the first idle sweep')
    started_ms = lc.pool.server_ms()
    sweeps_before = int(lc.redis.hget(counters, 'sweep:idle') or 0)
    run_replica(
        settings,
        replica_s,
        f"""
for i in range({count}):
    lc.activate(lc.reserve('api-1'), f's{{i}}')
    lc.checkpoint(f's{{i}}', {{'n': i}}, [{{'id': 'm1', 'text': 'hi'}}])
""",
    )
    scored: list[tuple[str, float]] = lc.redis.zrange(lc.index.keys.live, 0, -1, withscores=True)  # type: ignore[assignment]
    last_active = dict(scored)
    assert len(last_active) == count
    left: dict[str, int] = {}
    deadline = time.monotonic() + idle_ttl_s + 3 * interval_s + 20
    while len(left) < count and time.monotonic() < deadline:
        now_ms = lc.pool.server_ms()
        live = set(lc.redis.zrange(lc.index.keys.live, 0, -1))
        left |= {s: now_ms for s in last_active if s not in live and s not in left}
        time.sleep(0.05)
    elapsed_s = (lc.pool.server_ms() - started_ms) / 1000
    sweeps = int(lc.redis.hget(counters, 'sweep:idle') or 0) - sweeps_before
    after_s = sorted((left[s] - int(last_active[s])) / 1000 for s in left)
    on_time = [a for a in after_s if idle_ttl_s <= a <= idle_ttl_s + 3 * interval_s]
    print(f'\nclocks: worker {worker_s:+d} s, beat {beat_s:+d} s, replica {replica_s:+d} s: {len(left)} of {count} '
          f'reaped, {len(on_time)} within idle TTL + 3 sweeps by Redis\'s clock, '
          f'{sum(a < idle_ttl_s for a in after_s)} early; {sweeps} idle sweeps ran in {elapsed_s:.1f} s '
          f'(one every {interval_s} s)')  # fmt: skip
    assert len(on_time) == count, after_s
    assert sweeps >= elapsed_s / interval_s - 2  # none dropped for skew
    lc.disconnect()
