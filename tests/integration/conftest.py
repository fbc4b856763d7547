"""Fixtures of the integration tests: reapers assembled on real Redis and MongoDB, real Celery processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
def broker(real_redis: redis.Redis, private_redis_url: str) -> Iterator[str]:
    """The Celery broker: flushed before and after, so never a database of a shared server unless asked."""
    url = BROKER_URL or private_redis_url.rsplit('/', 1)[0] + '/2'
    client = connect_real_redis(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    started: list[subprocess.Popen[bytes]] = []
    logs: list[BinaryIO] = []

    def start(settings: Settings, *args: str, crashes: bool = False) -> subprocess.Popen[bytes]:
        suffix = 'crash' if crashes else 'log'  # a worker meant to crash logs its lost child's traceback
        log = open(tmp_path / f'{args[0]}-{len(started)}.{suffix}', 'wb')  # noqa: SIM115 (closed after the process)
        logs.append(log)
        process = subprocess.Popen(
            [sys.executable, '-m', 'celery', '-A', 'workers', *args, '--loglevel', 'INFO'],
            cwd=ROOT, env=environment(settings), stdout=log, stderr=subprocess.STDOUT,
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


def worker_args(name: str) -> tuple[str, ...]:
    return ('worker', '--concurrency', '2', '--hostname', f'{name}@%h', '--without-gossip', '--without-mingle')


def wait_for(predicate: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.1)
