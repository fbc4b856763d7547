"""`lifecycle demo`: the real system on embedded defaults, watched live, then verified.

It starts (or reuses) Redis and MongoDB, a real Celery worker and RedBeat beat with short intervals,
and API replicas as separate processes that create sessions against a small cap, run turns,
checkpoint, go idle and restore what was evicted. One replica is SIGKILLed half way. At the end it
checks the invariants it can see and cleans up everything it started.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import redis
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from lifecycle.client import Lifecycle
from lifecycle.errors import CapacityExceeded, LifecycleError
from lifecycle.models import NoticeKind, SessionState
from lifecycle.ops.embedded import owned_env, start_mongo, start_redis, stop_child, stop_process
from lifecycle.pool.records import read_records
from lifecycle.settings import Settings
from lifecycle.stores.mongo import MongoSnapshotStore

console = Console()
SPAWN = multiprocessing.get_context('spawn')

DEMO_SETTINGS: dict[str, Any] = {
    'max_sessions': 12,
    'idle_ttl_s': 6,
    'warn_before_s': 3,
    'default_ttl_s': 40,
    'min_idle_s': 3,
    'reservation_lease_s': 10,
    'busy_lease_s': 3,
    'replica_ttl_s': 3,
    'claim_lease_s': 5,
    'idle_interval_s': 2,
    'lru_interval_s': 2,
    'expired_interval_s': 2,
    'owner_lost_interval_s': 1,
    'warnings_interval_s': 2,
    'reconcile_interval_s': 5,
    'runs_interval_s': 5,
    'mongo_timeout_ms': 3_000,
}


# -- an API replica -----------------------------------------------------------------------------------


def replica_main(config: dict[str, Any], owner: str, duration_s: float, report: Any) -> None:
    """One API replica: create sessions, run turns, checkpoint, go idle, restore what was evicted."""
    lc = Lifecycle(Settings(**config))
    heartbeat = lc.start_heartbeat(owner)
    rng = random.Random(owner)
    active: list[str] = []
    figures = {'created': 0, 'refused': 0, 'turns': 0, 'restored': 0, 'idled': 0}
    cursor = '0'
    deadline = time.monotonic() + duration_s
    try:
        while time.monotonic() < deadline:
            for notice in lc.notices(owner, after=cursor):
                cursor = notice.id
                if notice.kind in (NoticeKind.EVICTED, NoticeKind.EXPIRED) and notice.session_id in active:
                    active.remove(notice.session_id)
                if notice.kind is NoticeKind.EVICTED and rng.random() < 0.4:
                    with contextlib.suppress(LifecycleError):  # full, or restored elsewhere: fine
                        lc.restore(notice.session_id, owner)
                        lc.checkpoint(notice.session_id, {'restored': True})
                        active.append(notice.session_id)
                        figures['restored'] += 1
            if len(active) < 4 and rng.random() < 0.5:
                try:
                    reservation = lc.reserve(owner, make_room=rng.random() < 0.2)
                except CapacityExceeded:
                    figures['refused'] += 1
                else:
                    session_id = f'{owner}-{uuid.uuid4().hex[:8]}'
                    lc.activate(reservation, session_id, ttl_seconds=rng.choice([5, 40, 40, 40]))
                    lc.checkpoint(session_id, {'turns': 0})
                    active.append(session_id)
                    figures['created'] += 1
            if active:
                session_id = rng.choice(active)
                with contextlib.suppress(LifecycleError):  # reaped or expired meanwhile
                    with lc.turn(session_id) as turn:
                        time.sleep(rng.uniform(0.2, 0.8))
                    lc.checkpoint(session_id, {'turns': turn.finished_seq}, [{'id': f'm{turn.finished_seq}'}])
                    figures['turns'] += 1
                if rng.random() < 0.25 and session_id in active:
                    active.remove(session_id)  # the user walks away: no more activity
                    figures['idled'] += 1
            report.put((owner, dict(figures)))
            time.sleep(rng.uniform(0.05, 0.2))
    finally:
        heartbeat.stop()
        report.put((owner, dict(figures)))
        lc.disconnect()


# -- the run ------------------------------------------------------------------------------------------


@dataclass
class Watch:
    """What the demo saw while it ran."""

    samples: int = 0
    over_cap: int = 0
    drift: int = 0
    replicas: dict[str, dict[str, int]] = field(default_factory=dict)
    killed: str | None = None
    owned_at_kill: int = 0

    def sample(self, client: redis.Redis, lc: Lifecycle) -> None:
        k = lc.index.keys
        pipe = client.pipeline(transaction=True)
        pipe.zcard(k.live)
        pipe.zcard(k.reservations)
        pipe.get(k.slots)
        live, reserved, slots = pipe.execute()
        self.samples += 1
        self.over_cap += live + reserved > lc.settings.max_sessions
        self.drift += int(slots or 0) != live + reserved


def view(lc: Lifecycle, watch: Watch, elapsed_s: float, duration_s: float) -> Group:
    stats = lc.stats()
    pool = Table(title=f'lifecycle demo: {elapsed_s:4.0f} / {duration_s:.0f} s')
    for column in ('live', 'busy', 'reserved', 'reaping', 'cap', 'samples', 'over cap'):
        pool.add_column(column, justify='right')
    pool.add_row(str(stats.live), str(stats.busy), str(stats.reserved), str(stats.reaping), str(stats.cap),
                 str(watch.samples), str(watch.over_cap))  # fmt: skip
    counters = Table(title='evictions, refusals, sweeps')
    counters.add_column('counter')
    counters.add_column('count', justify='right')
    for name, value in sorted(lc.redis.hgetall(lc.index.keys.counters).items()):
        if not str(name).startswith('sweep'):
            counters.add_row(str(name), str(value))
    replicas = Table(title='API replicas')
    for column in ('replica', 'created', 'refused', 'turns', 'idled', 'restored', 'state'):
        replicas.add_column(column)
    for owner, figures in sorted(watch.replicas.items()):
        state = 'SIGKILLed' if owner == watch.killed else 'running'
        replicas.add_row(owner, *(str(figures.get(c, 0)) for c in ('created', 'refused', 'turns', 'idled', 'restored')),
                         state)  # fmt: skip
    return Group(pool, counters, replicas)


def run_demo(duration_s: float = 60.0, replicas: int = 3) -> bool:
    """Run the demo; True when every verification held."""
    with ExitStack() as stack:
        notes: list[str] = []
        redis_url = start_redis(stack, notes)
        mongo_url = start_mongo(stack, notes)
        prefix = f'demo-{uuid.uuid4().hex[:8]}'
        settings = Settings(redis_url=redis_url, mongo_url=mongo_url, mongo_database=prefix.replace('-', '_'),
                            key_prefix=prefix, **DEMO_SETTINGS)  # fmt: skip
        config = settings.model_dump()
        lc = Lifecycle(settings)
        stack.callback(lc.disconnect)
        stack.callback(forget, lc, settings)
        for note in notes:
            console.print(note)
        env = owned_env(settings)
        logs = stack.enter_context(tempfile.TemporaryDirectory(prefix='lifecycle-demo-logs-'))
        for role in ('worker', 'beat'):
            args = (
                ['worker', '--concurrency', '2', '--without-gossip', '--without-mingle'] if role == 'worker' else [role]
            )
            log = stack.enter_context(open(os.path.join(logs, f'{role}.log'), 'wb'))
            process = subprocess.Popen([sys.executable, '-m', 'celery', '-A', 'workers', *args, '--loglevel', 'INFO'],
                                       env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
            stack.callback(stop_process, process)
        console.print(f'a Celery worker and a RedBeat beat are up (logs in {logs}); {replicas} API replicas start')
        return drive(stack, lc, config, duration_s, replicas)


def drive(stack: ExitStack, lc: Lifecycle, config: dict[str, Any], duration_s: float, count: int) -> bool:
    watch = Watch()
    reports = SPAWN.Queue()
    processes = {}
    for index in range(count):
        owner = f'api-{index + 1}'
        process = SPAWN.Process(target=replica_main, args=(config, owner, duration_s, reports), daemon=True)
        process.start()
        stack.callback(stop_child, process)
        processes[owner] = process
        watch.replicas[owner] = {}
    victim = 'api-2' if count > 1 else None
    client = lc.redis
    started = time.monotonic()
    with Live(view(lc, watch, 0, duration_s), console=console, refresh_per_second=2) as live:
        while any(p.is_alive() for p in processes.values()) or time.monotonic() - started < duration_s:
            elapsed = time.monotonic() - started
            # Kill one replica half way, while it holds sessions (mid-turn, perhaps).
            if victim and watch.killed is None and elapsed > duration_s * 0.4:
                owned = owned_live(lc, victim)
                if owned >= 2 or elapsed > duration_s * 0.7:
                    os.kill(processes[victim].pid or 0, signal.SIGKILL)
                    watch.killed, watch.owned_at_kill = victim, owned
            while not reports.empty():
                owner, figures = reports.get_nowait()
                watch.replicas[owner] = figures
            watch.sample(client, lc)
            live.update(view(lc, watch, elapsed, duration_s))
            time.sleep(0.25)
            if elapsed > duration_s + 30:
                break
        # The killed replica's sessions come back through owner-lost recovery; allow a few sweeps.
        recovery = time.monotonic() + 30
        while time.monotonic() < recovery and (owned_live(lc, watch.killed) or lc.stats().reaping):
            watch.sample(client, lc)
            live.update(view(lc, watch, time.monotonic() - started, duration_s))
            time.sleep(0.25)
    return summarise(lc, watch)


def owned_live(lc: Lifecycle, owner: str | None) -> int:
    if owner is None:
        return 0
    live = [str(session_id) for session_id in lc.redis.zrange(lc.index.keys.live, 0, -1)]
    records = read_records(lc.pool, live)
    return sum(1 for record in records if record is not None and record.startswith(f'{owner}|'))


def evicted_sessions(lc: Lifecycle) -> set[str]:
    """Sessions whose latest notice says they were evicted."""
    latest: dict[str, str] = {}
    for key in lc.redis.scan_iter(match=lc.index.keys.inbox('*')):
        entries: list[tuple[str, dict[str, str]]] = lc.redis.xrange(key)  # type: ignore[assignment]
        for _, fields in entries:
            latest[fields['session_id']] = fields['kind']
    return {session_id for session_id, kind in latest.items() if kind == NoticeKind.EVICTED}


def summarise(lc: Lifecycle, watch: Watch) -> bool:
    counters = {str(k): int(v) for k, v in lc.redis.hgetall(lc.index.keys.counters).items()}
    stats = lc.stats()
    evicted = evicted_sessions(lc)
    not_resumable = [s for s in evicted if (info := lc.status(s)) is None or info.state not in
                     (SessionState.RESUMABLE, SessionState.LIVE)]  # fmt: skip
    restored = sum(figures.get('restored', 0) for figures in watch.replicas.values())
    owner_lost, left = counters.get('evicted:owner_lost', 0), owned_live(lc, watch.killed)
    idle, expired = counters.get('evicted:idle', 0), counters.get('expired:expired', 0)
    checks = [
        ('cap never exceeded', watch.samples > 0 and not watch.over_cap, f'{watch.samples} samples, 0 over'),
        ('slot counter == live + reserved', watch.drift == 0, f'{watch.drift} samples drifted'),
        ('idle sessions evicted', idle > 0, str(idle)),
        ('every evicted session resumable in MongoDB', bool(evicted) and not not_resumable,
         f'{len(evicted)} evicted, {len(not_resumable)} not resumable'),
        ('evicted sessions restored', restored > 0, str(restored)),
        ('sessions expired at their hard TTL', expired > 0, str(expired)),
        ('killed replica recovered (owner lost)', left == 0 and (owner_lost > 0 or not watch.owned_at_kill),
         f'{watch.owned_at_kill} live when killed, {owner_lost} evicted as owner lost, {left} left'),
        ('nothing stuck reaping', stats.reaping == 0, str(stats.reaping)),
    ]  # fmt: skip
    table = Table(title='verified')
    for column in ('', 'check', 'figures'):
        table.add_column(column)
    for name, ok, figures in checks:
        table.add_row('[green]✓[/green]' if ok else '[red]✗[/red]', name, figures)
    console.print(table)
    passed = all(ok for _, ok, _ in checks)
    console.print('demo passed' if passed else '[red]demo failed[/red]')
    return passed


def forget(lc: Lifecycle, settings: Settings) -> None:
    """Delete what the demo wrote to a Redis and MongoDB that outlive it."""
    with contextlib.suppress(Exception):
        for key in list(lc.redis.scan_iter(match='{' + settings.key_prefix + '}*', count=1000)):
            lc.redis.delete(key)
        if isinstance(lc.store, MongoSnapshotStore):
            lc.store.client.drop_database(settings.mongo_database)
