"""The cap and the leases under real concurrency: many processes, real Redis, real SIGKILLs."""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from lifecycle import CapacityExceeded, Lifecycle, Settings
from tests.conftest import SettingsFactory
from tests.integration import procs

SPAWN = multiprocessing.get_context('spawn')


def redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


@pytest.fixture
def live_settings(make_settings: SettingsFactory, real_redis: redis.Redis) -> Settings:
    return make_settings(max_sessions=40, tenant_max_sessions=15, reservation_lease_s=30, busy_lease_s=3)


@pytest.fixture
def children() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(10)


def sample_pool(client: redis.Redis, settings: Settings) -> tuple[int, int, int, dict[str, int]]:
    """Live, reserved, the slot counter and tenants' slots, read in one MULTI/EXEC (independent of our scripts)."""
    k = Lifecycle(settings, redis_client=client).index.keys
    pipe = client.pipeline(transaction=True)
    pipe.zcard(k.live)
    pipe.zcard(k.reservations)
    pipe.get(k.slots)
    pipe.zrange(k.tenants, 0, -1)
    live, reserved, slots, members = pipe.execute()
    tenants: dict[str, int] = {}
    for member in members:
        if member != '#':
            tenants[member.split('|', 1)[0]] = tenants.get(member.split('|', 1)[0], 0) + 1
    return live, reserved, int(slots or 0), tenants


def test_cap_storm_never_exceeds_the_cap(live_settings: Settings, real_redis: redis.Redis, children: list[Any]) -> None:
    workers, seconds = 8, 4.0
    config = live_settings.model_dump()
    pipes = []
    for worker in range(workers):
        receiver, sender = SPAWN.Pipe(duplex=False)
        process = SPAWN.Process(target=procs.hammer_pool, args=(config, worker, seconds, sender))
        process.start()
        children.append(process)
        pipes.append(receiver)

    samples, over_cap, drift, tenant_over = 0, 0, 0, 0
    while any(p.is_alive() for p in children):
        live, reserved, slots, tenants = sample_pool(real_redis, live_settings)
        samples += 1
        over_cap += live + reserved > live_settings.max_sessions or slots > live_settings.max_sessions
        drift += slots != live + reserved
        tenant_over += any(int(n) > 15 for n in tenants.values())

    results = [p.recv() for p in pipes]
    for process in children:
        process.join()
        assert process.exitcode == 0
    admitted, refused = sum(r[0] for r in results), sum(r[1] for r in results)
    assert samples > 100
    assert admitted > 1000
    assert refused > 0, 'the storm never reached the cap; it proves nothing'
    assert (over_cap, drift, tenant_over) == (0, 0, 0)
    assert sample_pool(real_redis, live_settings) == (0, 0, 0, {})


def test_a_killed_creators_slots_come_back_after_the_lease(
    make_settings: SettingsFactory, real_redis: redis.Redis, children: list[Any]
) -> None:
    settings = make_settings(max_sessions=10, reservation_lease_s=2)
    lc = Lifecycle(settings)
    receiver, sender = SPAWN.Pipe(duplex=False)
    process = SPAWN.Process(target=procs.hold_reservations, args=(settings.model_dump(), 10, sender))
    process.start()
    children.append(process)
    lease_ends = receiver.recv()
    process.kill()
    process.join()
    assert process.exitcode == -signal.SIGKILL

    with pytest.raises(CapacityExceeded):
        lc.reserve('survivor')
    while redis_now_ms(real_redis) <= max(lease_ends):
        time.sleep(0.05)
    back = [lc.reserve('survivor', token=f'retry-{i}') for i in range(10)]
    assert len(back) == 10
    # A resent reserve (the same token) returns the same reservation and takes no second slot.
    assert lc.reserve('survivor', token='retry-0') == back[0]
    stats = lc.stats()
    assert (stats.reserved, stats.slots) == (10, 10)
    lc.disconnect()


def test_a_busy_lease_outlives_its_term_while_the_heartbeat_runs_and_lapses_after_a_kill(
    live_settings: Settings, real_redis: redis.Redis, children: list[Any]
) -> None:
    lc = Lifecycle(live_settings)
    lc.activate(lc.reserve('api-1'), 'long-turn')
    receiver, sender = SPAWN.Pipe(duplex=False)
    process = SPAWN.Process(target=procs.hold_turn, args=(live_settings.model_dump(), 'long-turn', sender))
    process.start()
    children.append(process)
    assert receiver.recv() == 'busy'

    watched_until = time.monotonic() + 2.5 * live_settings.busy_lease_s
    checks = 0
    while time.monotonic() < watched_until:
        info = lc.status('long-turn')
        assert info is not None
        assert info.busy, 'the heartbeat let the busy lease lapse mid-turn'
        checks += 1
        time.sleep(0.1)
    assert checks > 20

    killed_at = redis_now_ms(real_redis)
    process.kill()
    process.join()
    lease_end = real_redis.zscore(lc.index.keys.busy, 'long-turn')
    assert lease_end is not None
    assert lease_end <= killed_at + live_settings.busy_lease_s * 1000
    # Busy until the lease's end (with a margin for the time a status call takes), idle after it.
    while redis_now_ms(real_redis) < lease_end - 100:
        assert lc.status('long-turn').busy  # type: ignore[union-attr]
        time.sleep(0.1)
    while redis_now_ms(real_redis) <= lease_end:
        time.sleep(0.05)
    assert not lc.status('long-turn').busy  # type: ignore[union-attr]
    # The session itself is untouched: still live, its dead turn never counted as finished.
    info = lc.status('long-turn')
    assert info is not None
    assert info.turn_seq == 0
    lc.disconnect()


def test_threads_racing_for_the_last_slots_get_exactly_the_cap(
    live_settings: Settings, real_redis: redis.Redis
) -> None:
    lc = Lifecycle(live_settings)
    barrier = threading.Barrier(60)
    admitted: list[str] = []
    refused: list[CapacityExceeded] = []

    def race() -> None:
        barrier.wait()
        try:
            admitted.append(lc.reserve('api').token)
        except CapacityExceeded as exc:
            refused.append(exc)

    threads = [threading.Thread(target=race) for _ in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(admitted), len(refused)) == (40, 20)
    assert all(exc.cap == 40 for exc in refused)
    lc.disconnect()
