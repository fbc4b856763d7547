"""Fixtures of the integration tests: reapers assembled on real Redis and MongoDB, real Celery processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import redis

from lifecycle import FixedClock, Settings
from lifecycle.ops.embedded import owned_env as environment
from lifecycle.sandboxes import SandboxDriver
from tests.conftest import connect_real_redis
from tests.integration.reaper import Reaper, build_reaper

ROOT = Path(__file__).parents[2]

ReaperFactory = Callable[..., Reaper]


@pytest.fixture
def store_kind() -> str:
    """The store reapers are built on: the MongoDB-wire server; the eviction and sweep suites run over both
    it and its in-memory twin ('memory'), so the contract stays honest on each."""
    return 'mongo'


@pytest.fixture
def make_reaper(real_redis: Any, store_kind: str) -> Iterator[ReaperFactory]:
    built: list[Reaper] = []

    def make(settings: Settings, clock: FixedClock | None = None, driver: SandboxDriver | None = None) -> Reaper:
        reaper = build_reaper(settings, clock, driver, store_kind)
        built.append(reaper)
        return reaper

    yield make
    for reaper in built:
        if reaper.store is not None:
            reaper.store.close()
        reaper.lc.disconnect()


BROKER_URL = os.environ.get('LIFECYCLE_TEST_BROKER_URL')  # default: a database of a private redis-server
Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def broker_kind() -> str:
    """The broker Celery tests run on: Redis; the worker suite runs on RabbitMQ too (see test_celery_workers)."""
    return 'redis'


@pytest.fixture
def broker(broker_kind: str, real_redis: redis.Redis, private_redis_url: str) -> Iterator[str]:
    """The Celery broker: a database of a private redis-server flushed before and after, or a RabbitMQ vhost
    of the test's own (created and deleted with rabbitmqctl): never anything shared unless asked."""
    if broker_kind == 'rabbitmq':
        yield from rabbitmq_vhost()
        return
    url = BROKER_URL or private_redis_url.rsplit('/', 1)[0] + '/2'
    client = connect_real_redis(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


RABBITMQ = os.environ.get('LIFECYCLE_TEST_RABBITMQ', 'amqp://guest:guest@127.0.0.1:5672')


def rabbitmq_vhost() -> Iterator[str]:
    """A private vhost on the machine's RabbitMQ for one test, deleted afterwards."""
    ctl = shutil.which('rabbitmqctl')
    if ctl is None:
        if os.environ.get('CI'):
            raise RuntimeError('rabbitmqctl is not on PATH: RabbitMQ is needed for the broker tests')
        pytest.skip('no RabbitMQ here')
    vhost = f'lifecycle-test-{uuid.uuid4().hex[:10]}'
    subprocess.run([ctl, 'add_vhost', vhost], check=True, capture_output=True, timeout=60)
    try:
        subprocess.run([ctl, 'set_permissions', '-p', vhost, 'guest', '.*', '.*', '.*'], check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        yield f'{RABBITMQ}/{vhost}'
    finally:
        subprocess.run([ctl, 'delete_vhost', vhost], check=False, capture_output=True, timeout=60)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    started: list[subprocess.Popen[bytes]] = []
    logs: list[BinaryIO] = []

    def start(settings: Settings, *args: str, crashes: bool = False, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:  # fmt: skip
        suffix = 'crash' if crashes else 'log'  # a worker meant to crash logs its lost child's traceback
        log = open(tmp_path / f'{args[0]}-{len(started)}.{suffix}', 'wb')  # noqa: SIM115 (closed after the process)
        logs.append(log)
        process = subprocess.Popen(
            [sys.executable, '-m', 'celery', '-A', 'workers', *args, '--loglevel', 'INFO'],
            cwd=ROOT, env={**environment(settings), **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for handle in logs:
        handle.close()
    for log in tmp_path.glob('*.log'):
        text = log.read_text(errors='replace')
        assert 'Traceback' not in text, f'{log.name}:\n{text[-3000:]}'


@pytest.fixture(scope='session')
def container_engine() -> Iterator[str]:
    """A container engine's URL with the sandbox image (lifecycle.ops.engine.IMAGE): one that answers, else a
    private Podman API service started for this test session and stopped after it. Without one the container
    tests fail in CI and are skipped elsewhere, saying why."""
    from lifecycle.ops.engine import EngineUnavailable, start_engine

    with ExitStack() as stack:
        try:
            url = start_engine(stack, [])
        except (EngineUnavailable, ImportError) as exc:
            if os.environ.get('CI'):
                pytest.fail(f'no container engine for the container tests: {exc}')
            pytest.skip(f'no container engine: {exc}')
        yield url


def worker_args(name: str) -> tuple[str, ...]:
    return ('worker', '--concurrency', '2', '--hostname', f'{name}@%h', '--without-gossip', '--without-mingle')


FAKETIME = Path('/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1')


def skewed(offset_s: int) -> dict[str, str]:
    """The environment that shifts a process's wall clock by `offset_s`."""
    if not FAKETIME.exists():
        if os.environ.get('CI'):
            raise RuntimeError(f'{FAKETIME} is missing: apt-get install faketime')
        pytest.skip('libfaketime is not installed (apt-get install faketime)')
    # The monotonic clock moves with it (by a constant: harmless, it is only ever read relatively): libfaketime's
    # sleep with a true monotonic clock and a negative offset fails (EINVAL).
    return {'LD_PRELOAD': str(FAKETIME), 'FAKETIME': f'{offset_s:+d}s'}


def wait_for(predicate: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.1)
