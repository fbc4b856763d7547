"""The docker sandbox driver against a real container engine (Podman's Docker-compatible API service here):
containers that end themselves at their deadline, releases, leases, the sweeps that remove what is left
behind, and an engine that goes down."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from lifecycle import FixedClock, InvalidArgument, Lifecycle, SessionState, Settings
from lifecycle.ops.embedded import owned_env as environment
from lifecycle.ops.engine import IMAGE, rootfs_tar
from lifecycle.reaper.eviction import Outcome
from lifecycle.reaper.sweeps import SweepKind
from lifecycle.sandboxes import DockerDriver, Limits, SandboxError
from lifecycle.sandboxes.docker import DEADLINE_LABEL, POOL_LABEL, SESSION_LABEL, STARTED_LABEL, not_found
from tests.conftest import SettingsFactory
from tests.integration.conftest import ReaperFactory, Spawn, wait_for, worker_args

SPAWN = multiprocessing.get_context('spawn')


@dataclass
class Engine:
    """The test engine as an operator sees it: its own client, and every container this test made."""

    url: str
    prefix: str
    client: docker.DockerClient
    made: list[str] = field(default_factory=list)
    drivers: list[DockerDriver] = field(default_factory=list)

    def driver(self, prefix: str | None = None, **options: Any) -> DockerDriver:
        self.drivers.append(DockerDriver(prefix or self.prefix, options.pop('url', self.url), grace_s=1, **options))
        return self.drivers[-1]

    def of_pool(self, prefix: str | None = None) -> set[str]:
        mine: dict[str, Any] = {'label': f'{POOL_LABEL}={prefix or self.prefix}'}
        return {str(c.id) for c in self.client.containers.list(all=True, sparse=True, filters=mine)}

    def exists(self, container_id: str) -> bool:
        try:
            self.client.containers.get(container_id)
        except docker.errors.APIError as exc:
            if not_found(exc):
                return False
            raise
        return True

    def leftover(self, labels: dict[str, str], *, seconds: int = 300, name: str | None = None) -> str:
        """A container as one left behind would be: running, with these labels and no deadline of its own."""
        container = self.client.containers.run(IMAGE, ['sleep', str(seconds)], labels=labels, name=name,
                                               detach=True, init=True)  # fmt: skip
        self.made.append(str(container.id))
        return str(container.id)


@pytest.fixture
def engine(container_engine: str, key_prefix: str) -> Iterator[Engine]:
    client = docker.DockerClient(base_url=container_engine, version='auto')
    found = Engine(container_engine, key_prefix, client)
    yield found
    for container_id in [*found.of_pool(), *found.of_pool(f'{key_prefix}-other'), *found.made]:
        with contextlib.suppress(docker.errors.APIError):  # gone already, or going
            client.api.remove_container(container_id, force=True)
    client.close()
    for driver in found.drivers:
        driver.close()


def labels(prefix: str, session_id: str, *, deadline_ms: int, started_ms: int) -> dict[str, str]:
    return {POOL_LABEL: prefix, SESSION_LABEL: session_id, DEADLINE_LABEL: str(deadline_ms),
            STARTED_LABEL: str(started_ms)}  # fmt: skip


# -- the driver -------------------------------------------------------------------------------------------


def test_a_container_ends_itself_at_its_deadline_and_is_removed(engine: Engine) -> None:
    driver = engine.driver()
    started = time.monotonic()
    container_id = driver.start('s1', IMAGE, ['sleep', '3600'], 2)
    config = engine.client.api.inspect_container(container_id)
    assert config['HostConfig']['AutoRemove'] is True
    assert config['HostConfig']['Init'] is True  # PID 1 is an init: `timeout` is not PID 1, so its kill works
    assert config['State']['Running'] is True
    wait_for(lambda: not engine.exists(container_id), 2 + 8, 'the container to end itself and be removed')
    took = time.monotonic() - started
    print(f'a 2 s container was gone after {took:.2f} s')
    assert took >= 1.5
    assert driver.leases() == []


def test_start_labels_limits_and_replaces_the_sessions_earlier_sandbox_only_when_asked(engine: Engine) -> None:
    driver = engine.driver(limits=Limits(memory='64m', cpus=0.5))
    first = driver.start('s1', IMAGE, ['sleep', '3600'], 60, environment={'TOKEN': 'x'})
    with pytest.raises(SandboxError, match="'s1' already has a sandbox"):
        driver.start('s1', IMAGE, ['sleep', '3600'], 60)  # a retried request, a second replica: refused
    assert engine.exists(first)
    second = driver.start('s1', IMAGE, ['sleep', '3600'], 120, limits=Limits(pids=32), replace=True)
    assert not engine.exists(first)  # after a restore: the earlier activation's container goes
    config = engine.client.api.inspect_container(second)
    host = config['HostConfig']
    assert (host['Memory'], host['NanoCpus'], host['PidsLimit']) == (64 * 2**20, 500_000_000, 32)
    lease = driver.leases()
    assert [(x.session_id, x.sandbox_id) for x in lease] == [('s1', second)]
    assert 119_000 <= lease[0].expires_at_ms - (lease[0].started_at_ms or 0) <= 120_000
    assert config['Config']['Labels'][POOL_LABEL] == engine.prefix
    assert config['Name'].lstrip('/') == driver.name('s1')


def test_concurrent_starts_of_one_session_leave_exactly_the_winners_container(engine: Engine) -> None:
    driver = engine.driver()
    results: list[str | Exception] = []

    def start() -> None:
        try:
            results.append(driver.start('s1', IMAGE, ['sleep', '3600'], 60))
        except SandboxError as exc:
            results.append(exc)

    for _ in range(3):
        threads = [threading.Thread(target=start) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        won = [r for r in results if isinstance(r, str)]
        assert len(won) == 1, results
        assert engine.exists(won[0])  # the winner's container is never removed by a loser
        assert [lease.sandbox_id for lease in driver.leases()] == won
        driver.release('s1', 'idle')
        results.clear()


def test_bad_input_is_refused_naming_the_value_and_starts_nothing(engine: Engine) -> None:
    driver = engine.driver()
    bad: list[tuple[dict[str, Any], str]] = [
        ({'session_id': 'bad id'}, "'bad id'"),
        ({'image': ''}, "''"),
        ({'command': 'sleep 10'}, "'sleep 10'"),
        ({'command': []}, '[]'),
        ({'ttl_s': 0}, '0'),
        ({'ttl_s': 2.5}, '2.5'),
        ({'ttl_s': 10**9}, str(10**9)),
        ({'auto_remove': False}, "'auto_remove'"),
        ({'limits': Limits(pids=0)}, '0'),
    ]
    for change, named in bad:
        call: dict[str, Any] = {'session_id': 's1', 'image': IMAGE, 'command': ['sleep', '5'], 'ttl_s': 5, **change}
        with pytest.raises(InvalidArgument) as refused:
            driver.start(**call)
        assert named in str(refused.value), (change, str(refused.value))
    with pytest.raises(InvalidArgument, match="'bad id'"):
        driver.release('bad id', 'idle')
    assert engine.of_pool() == set()


def test_release_is_idempotent_and_never_touches_a_container_that_is_not_its_own(engine: Engine) -> None:
    driver = engine.driver()
    container_id = driver.start('s1', IMAGE, ['sleep', '3600'], 60)
    driver.release('s1', 'idle')
    assert not engine.exists(container_id)
    driver.release('s1', 'idle')  # gone already: success
    driver.release('never-started', 'idle')
    # A container squatting the session's name without its labels is somebody else's.
    squatter = engine.leftover({}, name=driver.name('s2'))
    driver.release('s2', 'idle')
    assert engine.exists(squatter)
    # Another pool's container for the same session id is that pool's.
    other = engine.driver(f'{engine.prefix}-other')
    theirs = other.start('s1', IMAGE, ['sleep', '3600'], 60)
    driver.release('s1', 'idle')
    assert engine.exists(theirs)
    assert [lease.sandbox_id for lease in driver.leases()] == []


def test_a_lease_releases_exactly_its_container_never_the_sessions_newer_one(engine: Engine) -> None:
    driver = engine.driver()
    driver.start('s1', IMAGE, ['sleep', '3600'], 60)
    (old,) = driver.leases()
    newer = driver.start('s1', IMAGE, ['sleep', '3600'], 60, replace=True)  # restored and started again meanwhile
    driver.release_lease(old, 'expired')
    assert engine.exists(newer)


def test_an_image_without_timeout_fails_clearly_and_runs_with_the_drivers_wrapper(engine: Engine) -> None:
    # An image of `sleep` alone (a busybox that is not linked as `timeout`): the deadline cannot be enforced.
    bare = 'localhost/lifecycle-bare:latest'
    tar = rootfs_tar(shutil.which('busybox') or '/bin/busybox')
    engine.client.api.import_image_from_data(only_applets(tar, {'sleep'}), repository=bare.split(':')[0], tag='latest')
    with pytest.raises(SandboxError, match='WRAPPER') as failed:
        engine.driver().check_image(bare)
    assert bare in str(failed.value)
    engine.driver().start('s1', bare, ['sleep', '3600'], 60)  # it starts, and exits at once (no `timeout`)
    wait_for(lambda: engine.of_pool() == set(), 10, 'the container without `timeout` to exit and be removed')
    engine.driver().check_image(IMAGE)
    wrapped = engine.driver(wrapper=shutil.which('busybox') or '/bin/busybox')
    wrapped.check_image(bare)
    container_id = wrapped.start('s1', bare, ['sleep', '3600'], 2)
    wait_for(lambda: not engine.exists(container_id), 10, 'the wrapped container to end at its deadline')


def only_applets(tar: bytes, keep: set[str]) -> bytes:
    """The image's tar with only the `keep` applet links (and busybox itself)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tar)) as source, tarfile.open(fileobj=out, mode='w') as target:
        for member in source.getmembers():
            name = member.name.rsplit('/', 1)[-1]
            if not member.issym() or name in keep:
                target.addfile(member, source.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def test_an_engine_that_is_down_raises_sandbox_errors_naming_the_session_and_the_engine(tmp_path: Path) -> None:
    url = f'unix://{tmp_path}/no-engine.sock'
    driver = DockerDriver('p', url)
    calls: list[tuple[Callable[[], object], str]] = [
        (lambda: driver.start('s1', IMAGE, ['sleep', '1'], 5), "'s1'"),
        (lambda: driver.release('s2', 'idle'), "'s2'"),
        (driver.leases, 'listing'),
    ]
    for call, session in calls:
        with pytest.raises(SandboxError) as failed:
            call()
        assert session in str(failed.value), str(failed.value)
        assert url in str(failed.value), str(failed.value)


# -- the sweeps -----------------------------------------------------------------------------------------------


def test_the_expiry_sweep_removes_containers_past_their_deadline_and_orphans_only_of_its_pool(
    engine: Engine, make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    clock = FixedClock()
    r = make_reaper(make_reaper_settings(reservation_lease_s=10, sandbox_orphan_grace_s=30), clock,
                    engine.driver(clock=clock))  # fmt: skip
    r.lc.activate(r.lc.reserve('api-1'), 'live', ttl_seconds=900)
    now = r.clock.now_ms()
    p = engine.prefix
    left = {
        'past': engine.leftover(labels(p, 'past', deadline_ms=now - 1_000, started_ms=now - 5_000)),
        'orphan': engine.leftover(labels(p, 'orphan', deadline_ms=now + 600_000, started_ms=now - 31_000)),
        'young': engine.leftover(labels(p, 'young', deadline_ms=now + 600_000, started_ms=now - 5_000)),
        'live': engine.leftover(labels(p, 'live', deadline_ms=now + 600_000, started_ms=now - 60_000)),
        'other': engine.leftover(labels(f'{p}-other', 'past', deadline_ms=now - 1_000, started_ms=now - 60_000)),
        'unlabelled': engine.leftover({}),
        'unreadable': engine.leftover({POOL_LABEL: p, SESSION_LABEL: 'x', DEADLINE_LABEL: 'soon'}),
    }
    report = r.sweep(SweepKind.EXPIRED)
    assert sorted(report.released_sandboxes) == ['orphan', 'past']
    survivors = {name for name, container_id in left.items() if engine.exists(container_id)}
    assert survivors == {'young', 'live', 'other', 'unlabelled', 'unreadable'}


def test_an_eviction_releases_its_containers_and_an_engine_outage_defers_them_to_the_orphan_list(
    engine: Engine, make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, tmp_path: Path
) -> None:
    n = 6
    service = PrivateEngine(tmp_path / 'podman.sock')
    try:
        clock = FixedClock()
        driver = engine.driver(url=service.url, clock=clock, timeout_s=5)
        r = make_reaper(make_reaper_settings(idle_ttl_s=60, max_sessions=2 * n), clock, driver)

        def open_sessions(batch: str) -> dict[str, str]:
            started = {}
            for i in range(n):
                session_id = f'{batch}-{i}'
                reservation = r.lc.reserve('api-1')
                started[session_id] = driver.start(session_id, IMAGE, ['sleep', '3600'], 600)
                r.lc.activate(reservation, session_id, ttl_seconds=600)
                r.lc.checkpoint(session_id, {'n': i})
            return started

        first = open_sessions('a')
        r.clock.advance(seconds=61)
        r.sweep(SweepKind.IDLE)
        assert sorted(x.session_id for x in r.results if x.outcome is Outcome.EVICTED) == sorted(first)
        assert [c for c in first.values() if engine.exists(c)] == []  # N evictions, N containers gone

        second = open_sessions('b')
        service.stop()
        r.clock.advance(seconds=61)
        started = time.monotonic()
        r.sweep(SweepKind.IDLE)
        print(f'{n} evictions with the engine down took {time.monotonic() - started:.2f} s')
        evicted = sorted(x.session_id for x in r.results if x.outcome is Outcome.EVICTED)
        assert evicted == sorted([*first, *second])
        for session_id in second:  # the durable path is untouched: evicted, resumable, slots back
            assert r.lc.status(session_id).state is SessionState.RESUMABLE  # type: ignore[union-attr]
        assert r.lc.stats().slots == 0
        orphans = r.lc.redis.zrange(r.lc.index.keys.orphans, 0, -1)
        assert sorted(orphans) == sorted(second)
        assert all(engine.exists(c) for c in second.values())  # still running: nobody could stop them

        assert r.sweep(SweepKind.EXPIRED).released_sandboxes == []  # still down: they stay on the list
        assert r.lc.redis.zcard(r.lc.index.keys.orphans) == n
        service.start()
        report = r.sweep(SweepKind.EXPIRED)
        assert sorted(report.released_sandboxes) == sorted(second)
        assert [c for c in second.values() if engine.exists(c)] == []
        assert r.lc.redis.zcard(r.lc.index.keys.orphans) == 0
    finally:
        service.stop()


class Flaky(DockerDriver):
    """The docker driver, with an engine that refuses releases while `down`."""

    down = False

    def release(self, session_id: str, reason: str) -> None:
        if self.down:
            raise SandboxError(f'release of {session_id!r} failed: the engine is down')
        super().release(session_id, reason)


def test_a_retried_release_never_removes_the_sandbox_a_session_started_since(
    engine: Engine, make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    clock = FixedClock()
    driver = Flaky(engine.prefix, engine.url, clock=clock, grace_s=1)
    engine.drivers.append(driver)
    r = make_reaper(make_reaper_settings(idle_ttl_s=60), clock, driver)
    reservation = r.lc.reserve('api-1')
    old = driver.start('chat-7', IMAGE, ['sleep', '3600'], 600)
    r.lc.activate(reservation, 'chat-7', ttl_seconds=600)
    r.lc.checkpoint('chat-7', {'n': 1})
    driver.down = True
    clock.advance(seconds=61)
    r.sweep(SweepKind.IDLE)  # evicted; its release failed: on the orphan list
    assert r.lc.redis.zrange(r.lc.index.keys.orphans, 0, -1) == ['chat-7']
    driver.down = False
    # The old container is cleared by hand, and a new sandbox for chat-7 is started: between reserve and
    # activate, the expiry sweep runs its retry.
    (lease,) = driver.leases()
    driver.release_lease(lease, 'operator')
    clock.advance(seconds=1)
    reservation = r.lc.reserve('api-1')
    new = driver.start('chat-7', IMAGE, ['sleep', '3600'], 600)
    r.sweep(SweepKind.EXPIRED)
    assert not engine.exists(old)
    assert engine.exists(new)  # it started after the failed release: not the sandbox the retry was for
    assert r.lc.redis.zcard(r.lc.index.keys.orphans) == 0  # the one it was for is gone: nothing left to retry
    r.lc.release(reservation)


class PrivateEngine:
    """A second Podman API service on a socket of its own (same containers): one to stop and start again."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.url = f'unix://{socket}'
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        podman = shutil.which('podman')
        if podman is None:
            if os.environ.get('CI'):
                pytest.fail('the outage test needs podman to run a second API service')
            pytest.skip('the outage test needs podman to run a second API service')
        self.process = subprocess.Popen([podman, 'system', 'service', '--time=0', self.url],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(self.answers, 30, 'the private podman service')

    def answers(self) -> bool:
        from lifecycle.ops.engine import answers

        return answers(self.url)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None


def test_a_freshly_started_worker_removes_what_was_left_behind_on_its_first_sweep(
    engine: Engine, make_reaper_settings: SettingsFactory, broker: str, spawn: Spawn
) -> None:
    settings = make_reaper_settings(broker_url=broker, sandbox_driver='docker', sandbox_docker_url=engine.url,
                                    reservation_lease_s=5, sandbox_orphan_grace_s=30)  # fmt: skip
    lc = Lifecycle(settings)
    lc.activate(lc.reserve('api-1'), 'live', ttl_seconds=900)
    now = lc.now_ms()
    p = engine.prefix
    left = {
        'past': engine.leftover(labels(p, 'past', deadline_ms=now - 1_000, started_ms=now - 5_000)),
        'orphan': engine.leftover(labels(p, 'orphan', deadline_ms=now + 600_000, started_ms=now - 31_000)),
        'young': engine.leftover(labels(p, 'young', deadline_ms=now + 600_000, started_ms=now)),
        'live': engine.leftover(labels(p, 'live', deadline_ms=now + 600_000, started_ms=now - 60_000)),
        'other': engine.leftover(labels(f'{p}-other', 'past', deadline_ms=now - 1_000, started_ms=now - 60_000)),
        'unlabelled': engine.leftover({}),
    }
    started = time.monotonic()
    spawn(settings, *worker_args('w1'))  # no beat: only the worker's own start-up sweep runs
    wait_for(lambda: not engine.exists(left['past']) and not engine.exists(left['orphan']), 60,
             "the new worker's first expiry sweep")  # fmt: skip
    print(f'left-behind containers removed {time.monotonic() - started:.1f} s after the worker was started')
    survivors = {name for name, container_id in left.items() if engine.exists(container_id)}
    assert survivors == {'young', 'live', 'other', 'unlabelled'}
    lc.disconnect()


# -- crash safety -----------------------------------------------------------------------------------------------


def replica_main(config: dict[str, Any], owner: str, ttl_s: int, count: int, ready: Any) -> None:
    """An API replica: sessions with containers (reserve, start the sandbox, activate), then it waits to die."""
    lc = Lifecycle(Settings(**config))
    lc.start_heartbeat(owner)
    driver = lc.driver
    assert isinstance(driver, DockerDriver)
    for i in range(count):
        reservation = lc.reserve(owner)
        driver.start(f'{owner}-{i}', IMAGE, ['sleep', '3600'], ttl_s)
        lc.activate(reservation, f'{owner}-{i}', ttl_seconds=ttl_s)
    ready.put(owner)
    time.sleep(3600)


@pytest.mark.timeout(180)
def test_containers_end_by_themselves_when_every_replica_and_worker_is_killed(
    engine: Engine, make_reaper_settings: SettingsFactory, broker: str, spawn: Spawn
) -> None:
    ttl_s, per_replica = 6, 3
    settings = make_reaper_settings(broker_url=broker, sandbox_driver='docker', sandbox_docker_url=engine.url,
                                    max_sessions=20)  # fmt: skip
    worker = spawn(settings, *worker_args('w1'), crashes=True)
    ready = SPAWN.Queue()
    replicas = [SPAWN.Process(target=replica_main, args=(settings.model_dump(), f'api-{i}', ttl_s, per_replica, ready))
                for i in range(3)]  # fmt: skip
    for replica in replicas:
        replica.start()
    try:
        for _ in replicas:
            ready.get(timeout=60)
        leases = engine.driver().leases()
        assert len(leases) == 3 * per_replica
        for process in replicas:
            os.kill(process.pid or 0, signal.SIGKILL)
        subprocess.run(['pkill', '-KILL', '-P', str(worker.pid)], check=False)  # the worker's pool processes
        worker.kill()
        lc = Lifecycle(settings)
        gone_at: dict[str, int] = {}
        deadline = time.monotonic() + ttl_s + 30
        while len(gone_at) < len(leases) and time.monotonic() < deadline:
            now = lc.now_ms()
            for lease in leases:
                if lease.session_id not in gone_at and not engine.exists(lease.sandbox_id or ''):
                    gone_at[lease.session_id] = now
            time.sleep(0.1)
        lc.disconnect()
        late = {lease.session_id: gone_at.get(lease.session_id, 10**15) - lease.expires_at_ms for lease in leases}
        print(f'{len(leases)} containers, every process SIGKILLed; gone relative to their deadlines (ms): '
              f'min {min(late.values())}, max {max(late.values())}')  # fmt: skip
        assert len(gone_at) == len(leases), sorted(set(late) - set(gone_at))
        assert max(late.values()) <= 5_000  # by itself, within its deadline plus a small margin
    finally:
        for replica in replicas:
            replica.kill()
            replica.join()


# -- the README -----------------------------------------------------------------------------------------------


def test_the_readme_container_example_runs_as_written(engine: Engine, make_settings: SettingsFactory) -> None:
    readme = (Path(__file__).parents[2] / 'README.md').read_text()
    example = re.search(r'## Container sandboxes\n\n.*?```python\n(.*?)```', readme, re.S)
    assert example is not None
    settings = make_settings(sandbox_driver='docker', sandbox_docker_url=engine.url)
    done = subprocess.run([sys.executable, '-c', example.group(1)], env=environment(settings), capture_output=True,
                          text=True, timeout=90, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.fullmatch(r'sandbox [0-9a-f]{12} ends by itself within 600 s\n', done.stdout), done.stdout
    assert engine.of_pool() == set()
