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
from lifecycle.ops.engine import IMAGE, start_engine
from lifecycle.pool.records import read_records
from lifecycle.sandboxes import DockerDriver
from lifecycle.settings import Settings
from lifecycle.stores.mongo import MongoSnapshotStore

console = Console()
SPAWN = multiprocessing.get_context('spawn')

DEADLINE_MARGIN_MS = 5_000  # a container ends itself at its deadline; starting and removing it take a moment
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
    'sandbox_stop_grace_s': 1,
    'sandbox_orphan_grace_s': 20,
}


# -- an API replica -----------------------------------------------------------------------------------


def replica_main(config: dict[str, Any], owner: str, duration_s: float, report: Any) -> None:
    """One API replica: create sessions, run turns, checkpoint, go idle, restore what was evicted."""
    replica = Replica(Lifecycle(Settings(**config)), owner)
    heartbeat = replica.lc.start_heartbeat(owner)
    deadline = time.monotonic() + duration_s
    try:
        while time.monotonic() < deadline:
            replica.step()
            report.put((owner, dict(replica.figures)))
            time.sleep(replica.rng.uniform(0.05, 0.2))
    finally:
        heartbeat.stop()
        report.put((owner, dict(replica.figures)))
        replica.lc.disconnect()


class Replica:
    """What one API replica does each step; with the docker driver, each session gets a container, started
    between reserve and activate (as apps do) and again after a restore."""

    def __init__(self, lc: Lifecycle, owner: str) -> None:
        self.lc, self.owner = lc, owner
        self.rng = random.Random(owner)
        self.active: list[str] = []
        self.figures = {'created': 0, 'refused': 0, 'turns': 0, 'restored': 0, 'idled': 0, 'containers': 0}
        self.driver = lc.driver if isinstance(lc.driver, DockerDriver) else None
        self.cursor = '0'

    def step(self) -> None:
        self.read_notices()
        if len(self.active) < 4 and self.rng.random() < 0.5:
            self.create()
        if self.active:
            self.run_turn(self.rng.choice(self.active))

    def sandbox(self, session_id: str, ttl_s: int, *, replace: bool = False) -> None:
        if self.driver is not None:
            self.driver.start(session_id, IMAGE, ['sleep', '3600'], max(1, ttl_s), replace=replace)
            self.figures['containers'] += 1

    def read_notices(self) -> None:
        lc = self.lc
        for notice in lc.notices(self.owner, after=self.cursor):
            self.cursor = notice.id
            if notice.kind in (NoticeKind.EVICTED, NoticeKind.EXPIRED) and notice.session_id in self.active:
                self.active.remove(notice.session_id)
            if notice.kind is NoticeKind.EVICTED and self.rng.random() < 0.4:
                with contextlib.suppress(LifecycleError):  # full, or restored elsewhere: fine
                    restored = lc.restore(notice.session_id, self.owner)
                    left_s = -(-(restored.session.expires_at_ms - lc.now_ms()) // 1000)
                    self.sandbox(notice.session_id, left_s, replace=True)  # its old one may not be gone yet
                    lc.checkpoint(notice.session_id, {'restored': True})
                    self.active.append(notice.session_id)
                    self.figures['restored'] += 1

    def create(self) -> None:
        try:
            reservation = self.lc.reserve(self.owner, make_room=self.rng.random() < 0.2)
        except CapacityExceeded:
            self.figures['refused'] += 1
            return
        session_id, ttl_s = f'{self.owner}-{uuid.uuid4().hex[:8]}', self.rng.choice([5, 40, 40, 40])
        try:
            self.sandbox(session_id, ttl_s)
        except LifecycleError:
            self.lc.release(reservation)  # no sandbox, no session: the slot goes back at once
            raise
        self.lc.activate(reservation, session_id, ttl_seconds=ttl_s)
        self.lc.checkpoint(session_id, {'turns': 0})
        self.active.append(session_id)
        self.figures['created'] += 1

    def run_turn(self, session_id: str) -> None:
        with contextlib.suppress(LifecycleError):  # reaped or expired meanwhile
            with self.lc.turn(session_id) as turn:
                time.sleep(self.rng.uniform(0.2, 0.8))
            self.lc.checkpoint(session_id, {'turns': turn.finished_seq}, [{'id': f'm{turn.finished_seq}'}])
            self.figures['turns'] += 1
        if self.rng.random() < 0.25 and session_id in self.active:
            self.active.remove(session_id)  # the user walks away: no more activity
            self.figures['idled'] += 1


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
    driver: DockerDriver | None = None
    container_samples: int = 0
    overdue: dict[str, int] = field(default_factory=dict)  # container -> ms past its deadline, beyond the margin

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
        if self.driver is not None and self.samples % 4 == 0:  # about once a second
            now = lc.now_ms()
            self.container_samples += 1
            for lease in self.driver.leases():
                if now - lease.expires_at_ms > DEADLINE_MARGIN_MS:
                    self.overdue[lease.sandbox_id or lease.session_id] = now - lease.expires_at_ms


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
    columns = ('created', 'refused', 'turns', 'idled', 'restored', *(('containers',) if watch.driver else ()))
    for column in ('replica', *columns, 'state'):
        replicas.add_column(column)
    for owner, figures in sorted(watch.replicas.items()):
        state = 'SIGKILLed' if owner == watch.killed else 'running'
        replicas.add_row(owner, *(str(figures.get(c, 0)) for c in columns), state)
    return Group(pool, counters, replicas)


def run_demo(duration_s: float = 60.0, replicas: int = 3, sandboxes: str = 'auto') -> bool:
    """Run the demo; True when every verification held. `sandboxes`: 'docker' (containers on a container
    engine), 'none', or 'auto' (docker when an engine answers or Podman can be started)."""
    with ExitStack() as stack:
        notes: list[str] = []
        redis_url = start_redis(stack, notes)
        mongo_url = start_mongo(stack, notes)
        prefix = f'demo-{uuid.uuid4().hex[:8]}'
        engine = start_sandboxes(stack, notes, sandboxes, prefix)
        if engine is False:
            return False
        drivers: dict[str, Any] = {'sandbox_driver': 'docker', 'sandbox_docker_url': engine} if engine else {}
        settings = Settings(redis_url=redis_url, mongo_url=mongo_url, mongo_database=prefix.replace('-', '_'),
                            key_prefix=prefix, **DEMO_SETTINGS, **drivers)  # fmt: skip
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


def start_sandboxes(stack: ExitStack, notes: list[str], sandboxes: str, prefix: str) -> str | bool | None:
    """The container engine's URL for the demo's sandboxes; None without; False when docker was asked and
    no engine can be had. Whatever containers the demo leaves are removed when it ends."""
    if sandboxes == 'none':
        return None
    try:
        url = start_engine(stack, notes)
    except Exception as exc:  # no engine, no SDK, or an engine that fails: 'auto' runs without containers
        if sandboxes == 'docker':
            console.print(f'[red]--sandboxes docker: {exc}[/red]')
            return False
        notes.append(f'sandboxes: none (no container engine: {exc})')
        return None
    stack.callback(remove_containers, DockerDriver(prefix, url, grace_s=1))
    notes.append(f'sandboxes: a container per session ({IMAGE}), ending itself at its deadline')
    return url


def remove_containers(driver: DockerDriver) -> None:
    with contextlib.suppress(LifecycleError):
        for lease in driver.leases():
            driver.release_lease(lease, 'demo_ended')
    driver.close()


def drive(stack: ExitStack, lc: Lifecycle, config: dict[str, Any], duration_s: float, count: int) -> bool:
    watch = Watch(driver=lc.driver if isinstance(lc.driver, DockerDriver) else None)
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


def ended_sessions(lc: Lifecycle, *kinds: NoticeKind) -> set[str]:
    """Sessions whose latest notice is one of `kinds` (evicted, expired)."""
    latest: dict[str, str] = {}
    for key in lc.redis.scan_iter(match=lc.index.keys.inbox('*')):
        entries: list[tuple[str, dict[str, str]]] = lc.redis.xrange(key)  # type: ignore[assignment]
        for _, fields in entries:
            latest[fields['session_id']] = fields['kind']
    return {session_id for session_id, kind in latest.items() if kind in kinds}


def container_checks(lc: Lifecycle, watch: Watch) -> list[tuple[str, bool, str]]:
    """With containers: every session that ended (and is not live again) has none left, none outlived its
    deadline, and there were some."""
    if watch.driver is None:
        return []
    ended = ended_sessions(lc, NoticeKind.EVICTED, NoticeKind.EXPIRED)
    live = {str(s) for s in lc.redis.zrange(lc.index.keys.live, 0, -1)}
    # The expiry sweep retries releases that failed; give it a moment before judging.
    deadline = time.monotonic() + 2 * lc.settings.expired_interval_s + 5
    while True:
        held = {lease.session_id for lease in watch.driver.leases()}
        left = sorted((ended - live) & held)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    started = sum(figures.get('containers', 0) for figures in watch.replicas.values())
    overdue = max(watch.overdue.values(), default=0)
    return [
        ('containers started for sessions', started > 0, str(started)),
        ("every evicted or expired session's container gone", not left,
         f'{len(ended - live)} ended, {len(left)} with a container left {left[:3]}'),
        ('no container outlived its deadline', not watch.overdue,
         f'{watch.container_samples} samples, {len(watch.overdue)} over by > {DEADLINE_MARGIN_MS} ms'
         + (f' (worst {overdue} ms)' if overdue else '')),
    ]  # fmt: skip


def summarise(lc: Lifecycle, watch: Watch) -> bool:
    counters = {str(k): int(v) for k, v in lc.redis.hgetall(lc.index.keys.counters).items()}
    stats = lc.stats()
    evicted = ended_sessions(lc, NoticeKind.EVICTED)
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
        *container_checks(lc, watch),
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
