"""`lifecycle bench`: lifecycle measured against the raw speed of the same Redis and MongoDB, in one run.

Every figure is taken right after its raw baseline, on the same servers: a private redis-server (so
memory figures start from an empty server) and MongoDB (embedded SecantusDB, or LIFECYCLE_MONGO_URL).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from lifecycle.client import Lifecycle
from lifecycle.clock import FixedClock
from lifecycle.models import ReapReason, SessionState
from lifecycle.ops.embedded import owned_env, start_mongo, start_redis, stop_process, wait_until
from lifecycle.pool.keys import Keys
from lifecycle.pool.trail import entry
from lifecycle.reaper.eviction import Evictor
from lifecycle.reaper.sweeps import Sweeper, SweepKind
from lifecycle.settings import Settings
from lifecycle.stores.base import Mark, MarkOutcome, SessionRecord
from lifecycle.stores.mongo import MongoSnapshotStore

console = Console(stderr=True)
SPAWN = multiprocessing.get_context('spawn')


@dataclass(frozen=True)
class Figure:
    name: str
    ours: float
    raw: float | None
    unit: str
    target: str  # e.g. '>= 0.8 of raw'
    ok: bool | None  # None: informational
    spread: tuple[float, float] | None = None  # the lowest and highest ratio of the repeated slices

    @property
    def ratio(self) -> float | None:
        return self.ours / self.raw if self.raw else None


@dataclass(frozen=True)
class Compared:
    """Ours against raw, measured in alternating slices: the medians of each, and the range of their ratios."""

    ours: float
    raw: float
    low: float
    high: float

    def figure(self, name: str, unit: str, target: str, at_least: float) -> Figure:
        return Figure(name, self.ours, self.raw, unit, target, self.ours >= at_least * self.raw, (self.low, self.high))


def compare(ours: Callable[[float], float], raw: Callable[[float], float], seconds: float, rounds: int = 3) -> Compared:
    """Run `ours` and `raw` (each given a slice of seconds, returning a rate) in `rounds` pairs of slices, which
    goes first alternating, so neither side always gets the warmer (or the more loaded) machine."""
    slice_s = max(0.3, seconds / rounds)
    pairs = []
    for round_ in range(rounds):
        if round_ % 2:
            ours_rate = ours(slice_s)
            raw_rate = raw(slice_s)
        else:
            raw_rate = raw(slice_s)
            ours_rate = ours(slice_s)
        pairs.append((ours_rate, raw_rate))
    ratios = [o / r for o, r in pairs if r]
    return Compared(statistics.median(o for o, _ in pairs), statistics.median(r for _, r in pairs),
                    min(ratios, default=0.0), max(ratios, default=0.0))  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    pool: int
    seconds: float
    evictions: int
    latency_sessions: int
    idle_interval_s: int


FULL = Sizes(pool=1_000_000, seconds=3.0, evictions=1_000, latency_sessions=120, idle_interval_s=60)
QUICK = Sizes(pool=50_000, seconds=1.0, evictions=200, latency_sessions=20, idle_interval_s=5)


def rate(call: Callable[[], int], seconds: float) -> float:
    """Operations per second of `call` (which returns how many operations it did), repeated for `seconds`."""
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        done += call()
    return done / elapsed


# -- round trips --------------------------------------------------------------------------------------


def reserve_release(settings: Settings, seconds: float, ready: Callable[[], object] = lambda: None) -> float:
    lc = Lifecycle(settings)

    def cycle() -> int:
        lc.release(lc.reserve('bench'))
        return 2

    try:
        cycle()  # connected, scripts loaded
        ready()
        return rate(cycle, seconds)
    finally:
        lc.disconnect()


def raw_evalsha(settings: Settings, seconds: float, ready: Callable[[], object] = lambda: None) -> float:
    # The client settings ours uses (decoded replies), and the most direct call: EVALSHA through execute_command.
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    sha = client.script_load('return 1')

    def call() -> int:
        client.execute_command('EVALSHA', sha, 0)  # type: ignore[no-untyped-call]
        return 1

    try:
        ready()
        return rate(call, seconds)
    finally:
        client.close()


def in_processes(target: str, settings: Settings, seconds: float, processes: int) -> float:
    """Sum of the rates of `processes` processes running `target` at once (started together, once all are ready)."""
    results, start = SPAWN.Queue(), SPAWN.Barrier(processes)
    children = [SPAWN.Process(target=_child, args=(target, settings.model_dump(), seconds, start, results))
                for _ in range(processes)]  # fmt: skip
    for child in children:
        child.start()
    total = sum(results.get(timeout=seconds + 60) for _ in children)
    for child in children:
        child.join()
    return float(total)


def _child(target: str, config: dict[str, Any], seconds: float, start: Any, results: Any) -> None:
    run = {'reserve_release': reserve_release, 'raw_evalsha': raw_evalsha}[target]
    results.put(run(Settings(**config), seconds, start.wait))


# -- the pool -----------------------------------------------------------------------------------------


def coalesced_touches(settings: Settings, ids: list[str], seconds: float) -> tuple[float, float]:
    """Stamps/s of coalesced `touch()` from one thread, the flushes' cost included (the clock stops after the
    last flush); and the longest a stamp waited to be applied, over 50 probes."""
    lc = Lifecycle(settings.model_copy(update={'touch_flush_ms': 20}))
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for session_id in ids:
            lc.touch(session_id)
        done += len(ids)
    lc.flush_touches()
    throughput = done / (time.perf_counter() - started)
    worst_ms = 0.0
    for _ in range(50):
        before = lc.redis.zscore(lc.index.keys.live, ids[0])
        time.sleep(0.002)  # a new millisecond: the stamp is later than the last
        lc.touch(ids[0])
        touched = time.perf_counter()
        while lc.redis.zscore(lc.index.keys.live, ids[0]) == before:
            time.sleep(0.0005)
        worst_ms = max(worst_ms, (time.perf_counter() - touched) * 1000)
    lc.disconnect()
    return throughput, worst_ms


def eviction_write_ms(mongo_url: str, documents: int, batch: int = 100, repeats: int = 5) -> float:
    """Median ms of one eviction write (`mark_resumable`) of `batch` sessions, in a collection of `documents`."""
    database = f'lifecycle_bench_writes_{documents}'
    store = MongoSnapshotStore(mongo_url, database, timeout_ms=60_000)
    try:
        store.ensure_indexes()
        store.sessions.insert_many(
            [
                {'_id': f'w{i}', 'state': SessionState.LIVE.value, 'fence': 1, 'checkpoint_seq': 3}
                for i in range(documents)
            ]
        )
        now = datetime.now(UTC)
        timings = []
        for round_ in range(repeats):
            marks = [Mark(SessionRecord(f'w{round_ * batch + i}', 'bench', None, None, now, now, now, 3), 10 + round_,
                          ReapReason.IDLE) for i in range(batch)]  # fmt: skip
            started = time.perf_counter()
            outcomes = store.mark_resumable(marks)
            timings.append((time.perf_counter() - started) * 1000)
            assert all(outcome is MarkOutcome.DONE for outcome in outcomes), outcomes
        return statistics.median(timings)
    finally:
        store.client.drop_database(database)
        store.close()


LOST_REPLICA = 'lost-replica'


def load_pool(
    client: redis.Redis,
    keys: Keys,
    size: int,
    due: int,
    now_ms: int,
    idle_ttl_s: int,
    *,
    idle_s: int = 0,
    lost: int = 0,
) -> list[str]:
    """Write `size` live sessions exactly as `activate` lays them out (live, deadline, record, tenant index, owner
    set): `due` of them idle past `idle_ttl_s`, the rest idle `idle_s`; the last `lost` owned by a replica whose
    heartbeat lapsed."""
    ids = [str(uuid.uuid4()) for _ in range(size)]  # 36 characters, like most apps' session ids
    record = '{owner}|tenant-0042||{created}|3|{tenure}'  # a tenure is a fencing token: 13 digits today
    for start in range(0, size, 10_000):
        chunk = ids[start : start + 10_000]
        pipe = client.pipeline(transaction=False)
        # Spread over 10 s, as real activity is (a million sessions stamped in one millisecond is not a pool).
        active = {sid: now_ms - (idle_ttl_s * 1000 + 1000 if start + i < due else idle_s * 1000 + (start + i) % 10_000)
                  for i, sid in enumerate(chunk)}  # fmt: skip
        pipe.zadd(keys.live, active)
        pipe.zadd(keys.deadline, dict.fromkeys(chunk, now_ms + 900_000))
        pipe.zadd(keys.tenants, {f'tenant-0042|{sid}': 0 for sid in chunk})
        owners: dict[str, list[str]] = {}
        buckets: dict[str, dict[Any, Any]] = {}
        for i, sid in enumerate(chunk):
            owner = LOST_REPLICA if start + i >= size - lost else 'api-replica-07'
            owners.setdefault(owner, []).append(sid)
            buckets.setdefault(keys.meta_of(sid), {})[sid] = record.format(owner=owner, created=now_ms,
                                                                           tenure=now_ms + start + i)  # fmt: skip
        for bucket, records in buckets.items():
            pipe.hset(bucket, mapping=records)
        for owner, members in owners.items():
            pipe.sadd(keys.owned(owner), *members)
        pipe.incrby(keys.slots, len(chunk))
        pipe.execute()
    client.zadd(keys.tenants, {'#': 0})
    client.zadd(keys.replicas, {'api-replica-07': now_ms + 86_400_000, **({LOST_REPLICA: now_ms - 1} if lost else {})})
    return ids


def quiet_sweeps_ms(small: Settings, large: Settings, kind: SweepKind, expected: int, rounds: int = 9
                    ) -> tuple[float, float]:  # fmt: skip
    """Median wall times (ms) of real sweeps of `kind` of two pools, each ordering `expected` sessions (dispatched
    nowhere), in alternating rounds (which pool goes first alternating), after one sweep each that reads from the
    start (an idle sweep's first, its cursors unset)."""
    with Lifecycle(small) as small_lc, Lifecycle(large) as large_lc:
        sweepers = [Sweeper(lc.pool, Evictor(lc.pool, lc.store, lc.driver), lambda orders: None)
                    for lc in (small_lc, large_lc)]  # fmt: skip
        times: list[list[float]] = [[], []]
        for sweeper in sweepers:
            sweeper.sweep(kind, dedupe=False)
        for round_ in range(rounds):
            for which in (0, 1) if round_ % 2 else (1, 0):
                started = time.perf_counter()
                report = sweepers[which].sweep(kind, dedupe=False)
                times[which].append((time.perf_counter() - started) * 1000)
                assert report.ordered == expected, (kind, report.ordered, expected)
        return statistics.median(times[0]), statistics.median(times[1])


def ping_p99_ms(redis_url: str, stop: Any, start: Any, results: Any) -> None:
    """In a child: a PING every millisecond until `stop` is set; puts its p99 latency (ms)."""
    client = redis.Redis.from_url(redis_url)
    client.ping()
    start.set()
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        client.ping()
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.001)
    results.put(percentile(sorted(latencies), 0.99))


def probed(redis_url: str, during: Callable[[], object]) -> float:
    """The p99 (ms) of a PING probe in another process while `during` runs."""
    stop, start, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    probe = SPAWN.Process(target=ping_p99_ms, args=(redis_url, stop, start, results))
    probe.start()
    start.wait(60)
    try:
        during()
    finally:
        stop.set()
    p99 = float(results.get(timeout=60))
    probe.join()
    return p99


def busy_cores(seconds: float) -> None:
    """Two processes spinning for `seconds`, touching no server: what a reconcile's client and Redis, each on a
    core, leave a probe of the CPU on a 2-core machine."""
    spinner = SPAWN.Process(target=spin, args=(seconds,))
    spinner.start()
    spin(seconds)
    spinner.join()


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def reconcile_stall(settings: Settings, client: redis.Redis) -> tuple[float, float, float, float]:
    """A reconcile of a whole pool (its second: the first repairs what loading left out): the longest single
    command Redis ran meanwhile (SLOWLOG, ms), and a PING probe's p99 (ms) during it, during as long without, and
    during as long with two cores kept busy by processes that send Redis nothing (the machine's scheduling floor)."""
    with Lifecycle(settings) as lc:
        sweeper = Sweeper(lc.pool, Evictor(lc.pool, lc.store, lc.driver), lambda orders: None)
        sweeper.sweep(SweepKind.RECONCILE, dedupe=False)
        client.config_set('slowlog-log-slower-than', 250)  # µs: what a stall could be made of
        client.config_set('slowlog-max-len', 50_000)
        client.slowlog_reset()
        started = time.perf_counter()
        during = probed(settings.redis_url, lambda: sweeper.sweep(SweepKind.RECONCILE, dedupe=False))
        took = time.perf_counter() - started
        longest_ms = max((entry['duration'] / 1000 for entry in client.slowlog_get(50_000)), default=0.25)
        client.config_set('slowlog-log-slower-than', 10_000)
        without = probed(settings.redis_url, lambda: time.sleep(took))
        cores = probed(settings.redis_url, lambda: busy_cores(min(took, 30)))
    return longest_ms, during, without, cores


def sweep_ms(sweeper: Sweeper, due: int, repeats: int = 5) -> float:
    """Median wall time of an idle sweep's selection (dry run: read, decide, dispatch nothing; what it reads
    includes the durable write's checkpoint gate, one MongoDB read per page)."""
    times = []
    for _ in range(repeats):
        report = sweeper.sweep(SweepKind.IDLE, dry_run=True, dedupe=False)
        assert report.ordered + report.refused == due, (report.ordered, report.refused, due)
        times.append(report.duration_ms)
    return float(statistics.median(times))


def zset_entry_pair_bytes(client: redis.Redis, size: int) -> float:
    """Measured bytes of two sorted-set entries per id (the floor of a live session: activity and deadline), for
    `size` ids shaped like the bench's sessions."""
    before = int(client.info('memory')['used_memory'])
    for start in range(0, size, 10_000):
        chunk = {f'{uuid.UUID(int=start + i)}': 1_700_000_000_000 + start + i for i in range(min(10_000, size - start))}
        client.zadd('raw-a', chunk)
        client.zadd('raw-b', chunk)
    per_id = (int(client.info('memory')['used_memory']) - before) / size
    client.delete('raw-a', 'raw-b')
    return per_id


def trail_bytes(client: redis.Redis, settings: Settings, sessions: int) -> tuple[float, float]:
    """Redis memory per session of full decision trails (`trail_length` decisions and a source each, as the
    scripts write them) for `sessions` sessions, and the bytes of the packed values themselves."""
    keys = Keys.for_prefix(settings.key_prefix)
    decisions = [entry('kept', 'idle', 'busy'), entry('aborted', 'idle', 'not_checkpointed'),
                 entry('warned', 'idle'), entry('kept', 'lru', 'moved'), entry('kept', 'idle', 'pinned'),
                 entry('rolled_back', 'idle')]  # fmt: skip
    before, payload = int(client.info('memory')['used_memory']), 0
    for start in range(0, sessions, 10_000):
        chunk: list[str] = []
        for i in range(start, min(start + 10_000, sessions)):
            at = 1_700_000_000_000 + i
            packed = ';'.join(['turn_end@api-1'] + [f'{at + n},{decisions[n % len(decisions)]},{n + 1}'
                                                     for n in range(settings.trail_length)])  # fmt: skip
            chunk += [f'{uuid.UUID(int=i)}', packed]
            payload += len(packed)
        client.execute_command('HSET', keys.trail, *chunk)  # type: ignore[no-untyped-call]
    per_session = (int(client.info('memory')['used_memory']) - before) / sessions
    client.delete(keys.trail)
    return per_session, payload / sessions


def naive_scan_ms(client: redis.Redis, keys: Keys, cutoff_ms: int) -> float:
    """What one writes without an index scored by time: scan every session, keep the idle ones."""
    started = time.perf_counter()
    due = [member for member, score in client.zscan_iter(keys.live, count=1_000) if score <= cutoff_ms]
    assert due
    return (time.perf_counter() - started) * 1000


def rss_while_sweeping(config: dict[str, Any], results: Any) -> None:
    """In a child: RSS before, at peak and after an idle sweep (dry) over the whole, all-due pool."""
    settings = Settings(**config)
    lc = Lifecycle(settings)
    sweeper = Sweeper(lc.pool, Evictor(lc.pool, lc.store, lc.driver), lambda orders: None)
    peak, stop = [rss_kb()], threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak.append(rss_kb())

    before = rss_kb()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    report = sweeper.sweep(SweepKind.IDLE, dry_run=True, dedupe=False)
    stop.set()
    sampler.join()
    results.put(
        {'before_kb': before, 'peak_kb': max(peak), 'after_kb': rss_kb(), 'ordered': report.ordered + report.refused}
    )


def rss_kb() -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
    return 0


# -- evictions ----------------------------------------------------------------------------------------


def raw_updates_per_s(store: MongoSnapshotStore, ids: Sequence[str], batch: int) -> float:
    """The documents an eviction just wrote (the same ids, so the same documents), written again by the most direct
    call: `update_one` with an eviction's conditions (`batch` 1), or one `update_many` per `batch` ids; the fields an
    eviction sets, `w: majority, j: true`. A fence above every earlier one, so every document is modified."""
    fence = time.time_ns() // 500_000  # twice epoch ms: above every token issued here, and still one (< 1e14)
    evictable = {'$in': ['live', 'resumable']}
    started = time.perf_counter()
    for first in range(0, len(ids), batch):
        chunk = list(ids[first : first + batch])
        now = datetime.now(UTC)
        fields = {'$set': {'state': 'resumable', 'fence': fence, 'reason': 'idle', 'evicted_at': now,
                           'updated_at': now}}  # fmt: skip
        if batch == 1:
            result = store.sessions.update_one(
                {'_id': chunk[0], 'state': evictable, 'checkpoint_seq': {'$gte': 0},
                 '$or': [{'fence': {'$lt': fence}}, {'fence': {'$exists': False}}]}, fields)  # fmt: skip
        else:
            result = store.sessions.update_many({'_id': {'$in': chunk}, 'state': evictable}, fields)
        assert result.modified_count == len(chunk), (result.modified_count, len(chunk))
    return len(ids) / (time.perf_counter() - started)


def eviction_ids(settings: Settings, count: int) -> list[str]:
    return [f'evict-{settings.key_prefix}-{i}' for i in range(count)]  # one MongoDB database: ids of each run's own


def evictions_per_s(lc: Lifecycle, settings: Settings, count: int) -> float:
    """Idle sessions evicted per second by a real worker, from one `lifecycle.sweep_idle` to an empty pool."""
    from workers import create_app

    past = Lifecycle(settings, clock=FixedClock(lc.now_ms() - 3_600_000), redis_client=lc.redis, store=lc.store)
    for i, session_id in enumerate(eviction_ids(settings, count)):
        past.activate(past.reserve('bench'), session_id, ttl_seconds=settings.max_ttl_s)  # idle, not expired
        past.checkpoint(session_id, {'i': i})
    app = create_app(settings)
    started = time.perf_counter()
    app.send_task('lifecycle.sweep_idle')
    # Polled every 10 ms: the clock stops within 10 ms of the last eviction.
    wait_until(lambda: lc.stats().live == 0, 120, 'the worker to evict every session', every_s=0.01)
    return count / (time.perf_counter() - started)


def evictions_with_workers(base: Settings, store: Any, processes: int, count: int) -> float:
    """`evictions_per_s` through one worker of `processes` pool processes, on a key prefix of its own, with
    batches small enough (25) that every process has work."""
    # A broker database of its own: the other bench worker, still running, must not take this run's sweep.
    broker = base.redis_url.rsplit('/', 1)[0] + f'/{10 + processes}'
    settings = Settings(**{**base.model_dump(), 'key_prefix': f'bench-scale-{processes}', 'evict_batch_size': 25,
                           'broker_url': broker})  # fmt: skip
    command = [sys.executable, '-m', 'celery', '-A', 'workers', 'worker', '--concurrency', str(processes),
               '--without-gossip', '--without-mingle', '--loglevel', 'WARNING']  # fmt: skip
    worker = subprocess.Popen(command, env=owned_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        with Lifecycle(settings, store=store) as lc:
            return evictions_per_s(lc, settings, count)
    finally:
        stop_process(worker)


def idle_latencies_s(lc: Lifecycle, settings: Settings, count: int, spread_s: float) -> list[float]:
    """From each session's idle deadline to its eviction (MongoDB's evicted_at), with beat running."""
    assert isinstance(lc.store, MongoSnapshotStore)
    for i in range(count):
        lc.activate(lc.reserve('bench'), f'late-{i}')
        lc.checkpoint(f'late-{i}', {'i': i})
        time.sleep(spread_s / count)
    wait_until(lambda: lc.stats().live == 0, spread_s + 3 * settings.idle_interval_s + 60, 'idle evictions')
    latencies = []
    for document in lc.store.sessions.find({'_id': {'$regex': '^late-'}}):
        deadline = document['last_active_at'].timestamp() + settings.idle_ttl_s
        latencies.append(document['evicted_at'].timestamp() - deadline)
    return sorted(latencies)


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(fraction * len(values)))]


# -- the run ------------------------------------------------------------------------------------------


def controls(base: Settings, client: redis.Redis, ids: list[str], seconds: float, add: Callable[[Figure], None]
             ) -> None:  # fmt: skip
    """extend, pin and touch with the decision trail on (touch sources too), against the raw commands that do the
    same work; and the trail's memory at 100,000 sessions."""
    traced = Settings(**{**base.model_dump(), 'trail_sources': True, 'replica_id': 'bench'})
    lc = Lifecycle(traced)
    keys = lc.index.keys
    assert isinstance(lc.store, MongoSnapshotStore)
    sessions = lc.store.sessions
    turn = itertools.cycle(ids)
    ttl = itertools.count(3_600)

    def ours_extend() -> int:
        lc.extend(next(turn), next(ttl) % 80_000 + 1)
        return 1

    def raw_extend() -> int:  # the same work: the deadline index, then the durable $max
        session_id, now = next(turn), time.time_ns() // 1_000_000
        client.zadd(keys.deadline, {session_id: now + 3_600_000}, xx=True, gt=True)
        sessions.update_one({'_id': session_id}, {'$max': {'expires_at': datetime.now(UTC)}})
        return 1

    def ours_pin() -> int:
        session_id = next(turn)
        lc.pin(session_id)
        lc.unpin(session_id)
        return 2

    def raw_pin() -> int:
        session_id = next(turn)
        client.zadd(keys.pinned, {session_id: 1})
        client.zrem(keys.pinned, session_id)
        return 2

    def ours_touch_many() -> int:
        lc.touch_many(ids)
        return len(ids)

    def raw_touch_many() -> int:
        client.zadd(keys.live, dict.fromkeys(ids, time.time_ns() // 1_000_000))
        return len(ids)

    def ours_touch() -> int:
        lc.touch(next(turn))
        return 1

    def raw_touch() -> int:
        client.zadd(keys.live, {next(turn): time.time_ns() // 1_000_000})
        return 1

    for name, ours, raw, unit, what in (
        ('extend (Redis + MongoDB $max)', ours_extend, raw_extend, 'calls/s', 'ZADD deadline + update_one $max'),
        ('pin + unpin', ours_pin, raw_pin, 'calls/s', 'ZADD + ZREM'),
        ('touch_many (1,000), trail sources on', ours_touch_many, raw_touch_many, 'stamps/s',
         'one multi-member ZADD'),
        ('touch (one round trip), trail sources on', ours_touch, raw_touch, 'stamps/s', 'one ZADD'),
    ):  # fmt: skip
        measured = compare(lambda t, f=ours: rate(f, t), lambda t, f=raw: rate(f, t), seconds)  # type: ignore[misc]
        add(replace(measured.figure(name, unit, f'informational (raw: {what})', 0.0), ok=None))
    per_session, payload = trail_bytes(client, traced, 100_000)
    add(Figure(f'decision trail memory per session at 100,000 (full: {traced.trail_length} decisions and a source)',
               per_session, payload, 'bytes', '<= 400 bytes (raw: the packed value)', per_session <= 400))  # fmt: skip
    lc.disconnect()


def run_bench(
    quick: bool = False, processes: int = 4, as_json: bool = False, as_markdown: bool = False
) -> list[Figure]:
    sizes = QUICK if quick else FULL
    figures: list[Figure] = []
    with ExitStack() as stack:
        notes: list[str] = []
        redis_url = start_redis(stack, notes, reuse_configured=False)
        mongo_url = start_mongo(stack, notes)
        for note in notes:
            console.print(note)
        base = Settings(redis_url=redis_url, mongo_url=mongo_url, key_prefix='bench', max_sessions=10_000_000,
                        mongo_database='lifecycle_bench', idle_ttl_s=5)  # fmt: skip
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        stack.callback(client.close)

        def add(figure: Figure) -> None:
            figures.append(figure)
            console.print(f'  {figure.name}: {figure.ours:,.1f} {figure.unit}' +
                          (f' (raw {figure.raw:,.1f}, ratio {figure.ratio:.2f})' if figure.raw else ''))  # fmt: skip

        console.print('round trips ...')
        one = compare(lambda t: reserve_release(base, t), lambda t: raw_evalsha(base, t), sizes.seconds)
        add(one.figure('reserve+release, 1 process', 'calls/s', '>= 0.8 of direct EVALSHA', 0.8))
        many = compare(lambda t: in_processes('reserve_release', base, t, processes),
                       lambda t: in_processes('raw_evalsha', base, t, processes), sizes.seconds)  # fmt: skip
        add(many.figure(f'reserve+release, {processes} processes', 'calls/s', '>= 0.8 of direct EVALSHA', 0.8))

        lc = Lifecycle(base)
        stack.callback(lc.disconnect)
        ids = [f'touch-{i}' for i in range(1_000)]
        for session_id in ids:
            lc.activate(lc.reserve('bench'), session_id)
        live = lc.index.keys.live

        def raw_many() -> int:
            client.zadd(live, dict.fromkeys(ids, time.time_ns() // 1_000_000))
            return len(ids)

        def ours_many() -> int:
            lc.touch_many(ids)
            return len(ids)

        turn = itertools.cycle(ids)  # one session a call, a different one each time, as a web tier's traffic

        def raw_one() -> int:
            client.zadd(live, {next(turn): time.time_ns() // 1_000_000})
            return 1

        def ours_one() -> int:
            lc.touch(next(turn))
            return 1

        batch = compare(lambda t: rate(ours_many, t), lambda t: rate(raw_many, t), sizes.seconds)
        add(batch.figure('touch_many (1,000 per call)', 'stamps/s', '>= 0.9 of one multi-member ZADD', 0.9))
        single_call = compare(lambda t: rate(ours_one, t), lambda t: rate(raw_one, t), sizes.seconds)
        add(single_call.figure('touch (one session, one round trip)', 'stamps/s', 'informational (>= 0.8)', 0.8))
        single = single_call.ours
        coalesced, staleness_ms = coalesced_touches(base, ids, sizes.seconds)
        raw = rate(raw_many, sizes.seconds)
        add(Figure('touch, coalesced (touch_flush_ms=20), vs multi-member ZADD', coalesced, raw, 'stamps/s',
                   '>= 0.8 of raw', coalesced >= 0.8 * raw))  # fmt: skip
        add(Figure('touch, coalesced, vs one round trip each', coalesced, single, 'stamps/s', '>= 50x',
                   coalesced >= 50 * single))  # fmt: skip
        add(Figure('coalesced stamp applied after (max of 50)', staleness_ms, None, 'ms', '<= flush interval + 10 ms',
                   staleness_ms <= 30))  # fmt: skip

        console.print('session controls with the decision trail on ...')
        controls(base, client, ids, sizes.seconds, add)

        console.print(f'sweep selection: 1,000 due in 10,000 and in {sizes.pool:,} ...')
        now = lc.now_ms()
        # An idle timeout far longer than loading a million sessions takes: exactly 1,000 stay due.
        selection = {**base.model_dump(), 'idle_ttl_s': 3_600}
        small = Settings(**{**selection, 'key_prefix': 'bench-small'})
        large = Settings(**{**selection, 'key_prefix': 'bench-large'})
        load_pool(client, Keys.for_prefix(small.key_prefix), 10_000, 1_000, now, small.idle_ttl_s)
        used_before = int(client.info('memory')['used_memory'])
        load_pool(client, Keys.for_prefix(large.key_prefix), sizes.pool, 1_000, now, large.idle_ttl_s)
        per_session = (int(client.info('memory')['used_memory']) - used_before) / sizes.pool
        small_lc, large_lc = Lifecycle(small), Lifecycle(large)
        stack.callback(small_lc.disconnect)
        stack.callback(large_lc.disconnect)
        small_ms = sweep_ms(
            Sweeper(small_lc.pool, Evictor(small_lc.pool, small_lc.store, small_lc.driver), lambda o: None), 1_000
        )
        large_ms = sweep_ms(
            Sweeper(large_lc.pool, Evictor(large_lc.pool, large_lc.store, large_lc.driver), lambda o: None), 1_000
        )
        add(Figure(f'sweep selection, pool {sizes.pool:,} vs 10,000', large_ms, small_ms, 'ms',
                   '<= 1.3 x (grows with due, not pool)', large_ms <= 1.3 * small_ms))  # fmt: skip
        naive_ms = naive_scan_ms(client, Keys.for_prefix(large.key_prefix), now - large.idle_ttl_s * 1000)
        add(Figure(f'sweep selection vs a naive full scan, pool {sizes.pool:,}', large_ms, naive_ms, 'ms',
                   'informational (ratio < 1 is faster)', None))  # fmt: skip
        two_entries = zset_entry_pair_bytes(client, sizes.pool)
        add(Figure(f'Redis memory per live session at {sizes.pool:,}', per_session, two_entries, 'bytes',
                   '<= 400 bytes (raw: two sorted-set entries, measured)', per_session <= 400))  # fmt: skip

        console.print('worker RSS while sweeping the whole pool (every session due) ...')
        everything_due = {**large.model_dump(), 'idle_ttl_s': 1}
        time.sleep(1.5)  # with a one-second idle timeout, every session of the large pool is now due
        results = SPAWN.Queue()
        child = SPAWN.Process(target=rss_while_sweeping, args=(everything_due, results))
        child.start()
        rss = results.get(timeout=900)
        child.join()
        growth_mb = (rss['peak_kb'] - rss['before_kb']) / 1024
        add(Figure(f'sweep process RSS growth over {rss["ordered"]:,} due sessions', growth_mb, rss['before_kb'] / 1024,
                   'MB', '< 50 MB (flat; raw: RSS before)', growth_mb < 50))  # fmt: skip
        client.delete(*[key for key in client.scan_iter(match='{bench-*}*')] or ['-'])

        console.print(f'sweeps with nothing due, pools of 10,000 and {sizes.pool:,}; reconcile ...')
        # Idle 2 min: past the unused short profile's minute, far from the global hour. 1,000 owned by a lost replica.
        quiet = {**selection, 'profiles': {'short': {'idle_ttl_s': 60}}}
        quiet_small = Settings(**{**quiet, 'key_prefix': 'bench-quiet-small'})
        quiet_large = Settings(**{**quiet, 'key_prefix': 'bench-quiet-large'})
        now = lc.now_ms()
        for settings, size in ((quiet_small, 10_000), (quiet_large, sizes.pool)):
            load_pool(client, Keys.for_prefix(settings.key_prefix), size, 0, now, 3_600, idle_s=120, lost=1_000)
        small_ms, large_ms = quiet_sweeps_ms(quiet_small, quiet_large, SweepKind.IDLE, 0)
        add(Figure(f'idle sweep, nothing due, one unused short profile: pool {sizes.pool:,} vs 10,000', large_ms,
                   small_ms, 'ms', '<= 1.3 x', large_ms <= 1.3 * small_ms))  # fmt: skip
        small_ms, large_ms = quiet_sweeps_ms(quiet_small, quiet_large, SweepKind.OWNER_LOST, 1_000)
        add(Figure(f'owner-lost sweep, 1,000 sessions of the lost replica: pool {sizes.pool:,} vs 10,000', large_ms,
                   small_ms, 'ms', '<= 1.3 x', large_ms <= 1.3 * small_ms))  # fmt: skip
        longest_ms, during_ms, without_ms, cores_ms = reconcile_stall(quiet_large, client)
        add(Figure(f'reconcile of {sizes.pool:,}: longest single Redis command (SLOWLOG)', longest_ms, None, 'ms',
                   '<= 5 ms', longest_ms <= 5))  # fmt: skip
        add(Figure('PING p99 during that reconcile vs without', during_ms, without_ms, 'ms', '<= 2 x',
                   during_ms <= 2 * without_ms))  # fmt: skip
        add(Figure('PING p99 during that reconcile vs two busy cores sending Redis nothing', during_ms, cores_ms,
                   'ms', 'informational: the scheduling floor', None))  # fmt: skip
        client.delete(*[key for key in client.scan_iter(match='{bench-quiet-*}*')] or ['-'])

        large_docs = 10_000 if quick else 50_000
        console.print(f'the eviction write of 100 sessions, in 1,000 and in {large_docs:,} documents ...')
        small_ms, large_ms = eviction_write_ms(mongo_url, 1_000), eviction_write_ms(mongo_url, large_docs)
        add(Figure(f'eviction write of 100, {large_docs:,} documents vs 1,000', large_ms, small_ms, 'ms',
                   '<= 1.3 x', large_ms <= 1.3 * small_ms))  # fmt: skip

        console.print('evictions through a real worker ...')
        assert isinstance(lc.store, MongoSnapshotStore)
        lc.store.ensure_indexes()
        worker_settings = Settings(**{**base.model_dump(), 'idle_interval_s': sizes.idle_interval_s,
                                      'key_prefix': 'bench-worker'})  # fmt: skip
        env = owned_env(worker_settings)
        worker = subprocess.Popen([sys.executable, '-m', 'celery', '-A', 'workers', 'worker', '--concurrency', '2',
                                   '--without-gossip', '--without-mingle', '--loglevel', 'WARNING'],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        stack.callback(stop_process, worker)
        time.sleep(3)
        worker_lc = Lifecycle(worker_settings, store=lc.store)
        stack.callback(worker_lc.disconnect)
        ours = evictions_per_s(worker_lc, worker_settings, sizes.evictions)
        evicted = eviction_ids(worker_settings, sizes.evictions)  # the raw writes: these very documents again
        one_at_a_time = raw_updates_per_s(lc.store, evicted, 1)
        add(Figure('evictions end to end (real worker, MongoDB)', ours, one_at_a_time, 'sessions/s',
                   '>= 1.0 x one-at-a-time raw updates of the same documents', ours >= one_at_a_time))  # fmt: skip
        batched = raw_updates_per_s(lc.store, evicted, 100)
        add(Figure('evictions end to end vs raw update_many of the same documents, 100 ids a batch', ours, batched,
                   'sessions/s', '>= 0.5 of raw', ours >= 0.5 * batched))  # fmt: skip

        console.print('evictions with 1, 2 and 4 worker processes ...')
        scaling = {n: evictions_with_workers(base, lc.store, n, sizes.evictions) for n in (1, 2, 4)}
        for n, per_s in scaling.items():
            add(Figure(f'evictions, {n} worker process(es), batches of 25', per_s, scaling[1], 'sessions/s',
                       'informational (raw: 1 process)', None))  # fmt: skip
        cores = os.cpu_count() or 1
        doubled = scaling[2] >= 1.6 * scaling[1] if cores >= 4 else None  # two workers on two cores share them
        add(Figure(f'evictions, 2 worker processes vs 1 ({cores} cores here)', scaling[2], scaling[1], 'sessions/s',
                   '>= 1.6 x where the cores allow', doubled))  # fmt: skip

        console.print(f'idle deadline to eviction, idle sweep every {sizes.idle_interval_s} s ...')
        beat = subprocess.Popen([sys.executable, '-m', 'celery', '-A', 'workers', 'beat', '--loglevel', 'WARNING'],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        stack.callback(stop_process, beat)
        latencies = idle_latencies_s(worker_lc, worker_settings, sizes.latency_sessions, sizes.idle_interval_s)
        add(Figure('idle deadline to eviction, p50', percentile(latencies, 0.5), float(sizes.idle_interval_s), 's',
                   'informational (raw: the sweep interval)', None))  # fmt: skip
        add(Figure('idle deadline to eviction, p99', percentile(latencies, 0.99), float(sizes.idle_interval_s), 's',
                   '<= interval + a few s', percentile(latencies, 0.99) <= sizes.idle_interval_s + 5))  # fmt: skip
        lc.store.client.drop_database('lifecycle_bench')
    report(figures, as_json, as_markdown)
    return figures


def markdown(figures: list[Figure]) -> str:
    """The figures as the README's performance table (a row per figure, shortfalls included)."""
    rows = ['| figure | ours | raw baseline | ratio (range) | target | holds |', '|---|---|---|---|---|---|']
    for f in figures:
        ratio = f'{f.ratio:.2f}' if f.ratio else ''
        if f.spread is not None and ratio:
            ratio += f' ({f.spread[0]:.2f}-{f.spread[1]:.2f})'
        raw = f'{f.raw:,.1f}' if f.raw else ''
        holds = '' if f.ok is None else ('yes' if f.ok else '**no**')
        rows.append(f'| {f.name} | {f.ours:,.1f} {f.unit} | {raw} | {ratio} | {f.target} | {holds} |')
    return '\n'.join(rows)


def report(figures: list[Figure], as_json: bool, as_markdown: bool = False) -> None:
    if as_json:
        print(json.dumps([{**asdict(f), 'ratio': f.ratio} for f in figures], indent=2))
        return
    if as_markdown:
        print(markdown(figures))
        return
    table = Table(title='lifecycle bench')
    for column in ('figure', 'ours', 'raw', 'ratio', 'unit', 'target', 'holds'):
        table.add_column(column)
    for f in figures:
        ratio = f'{f.ratio:.2f}' if f.ratio else ''
        if f.spread is not None and ratio:
            ratio += f' ({f.spread[0]:.2f}-{f.spread[1]:.2f})'
        table.add_row(f.name, f'{f.ours:,.1f}', f'{f.raw:,.1f}' if f.raw else '', ratio,
                      f.unit, f.target, '' if f.ok is None else ('yes' if f.ok else 'NO'))  # fmt: skip
    Console(width=200).print(table)
