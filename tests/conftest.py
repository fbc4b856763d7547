"""Shared fixtures: settings on a private key prefix, a fixed clock, fake and real Redis."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pymongo
import pytest
import redis
from redis.cluster import RedisCluster

from lifecycle import FixedClock, Lifecycle, Settings

REDIS_URL = os.environ.get('LIFECYCLE_TEST_REDIS_URL', 'redis://127.0.0.1:6379/15')
# Set (by tests/integration/test_redis_cluster.py, or by hand), the real-Redis tests run on this Redis Cluster.
CLUSTER_URL = os.environ.get('LIFECYCLE_TEST_REDIS_CLUSTER_URL')
MONGO_URL = os.environ.get('LIFECYCLE_TEST_MONGO_URL')
_INTEGRATION = Path(__file__).parent / 'integration'

SettingsFactory = Callable[..., Settings]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration needs real servers."""
    for item in items:
        if _INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def connect_real_redis(url: str = REDIS_URL) -> redis.Redis:
    """A client of the test Redis (of the test Redis Cluster, when there is one); skipped on a laptop without
    one, a failure in CI."""
    if CLUSTER_URL and url == REDIS_URL:
        cluster: Any = RedisCluster.from_url(CLUSTER_URL, decode_responses=True)
        return cluster  # type: ignore[no-any-return]
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        client.ping()
    except redis.ConnectionError:
        client.close()
        if os.environ.get('CI'):
            raise
        pytest.skip(f'no Redis at {url} (set LIFECYCLE_TEST_REDIS_URL)')
    return client


def connect_raw_redis() -> redis.Redis:
    """A bytes client of the test Redis (or Redis Cluster), as a foreign writer would use."""
    if CLUSTER_URL:
        cluster: Any = RedisCluster.from_url(CLUSTER_URL)
        return cluster  # type: ignore[no-any-return]
    return redis.Redis.from_url(REDIS_URL)


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def start_private_redis(*config: str, port: int | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """A redis-server of the test's own on a free loopback port, or on `port` (to restart one): stop it with
    `stop_private_redis`. For what must never touch a shared server (SCRIPT FLUSH, FLUSHDB, a restart)."""
    from lifecycle.ops.embedded import free_port, reachable

    binary = shutil.which('redis-server')
    if binary is None:
        if os.environ.get('CI'):
            raise RuntimeError('redis-server is not on PATH')
        pytest.skip('no redis-server on PATH for a private server')
    port = port or free_port()
    process = subprocess.Popen(
        [binary, '--port', str(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', *config],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f'redis://127.0.0.1:{port}/0'
    deadline = time.monotonic() + 10
    while not reachable(url):
        if time.monotonic() > deadline or process.poll() is not None:
            stop_private_redis(process)
            raise RuntimeError(f'the private redis-server on port {port} did not start')
        time.sleep(0.05)
    return url, process


def stop_private_redis(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope='session')
def private_redis_url() -> Iterator[str]:
    """One private redis-server for the whole test session (each user flushes only what it owns there)."""
    url, process = start_private_redis()
    yield url
    stop_private_redis(process)


@pytest.fixture
def private_redis(private_redis_url: str) -> Iterator[redis.Redis]:
    """A client of a private server's database 1, flushed before and after: scripts may be flushed too."""
    client = redis.Redis.from_url(private_redis_url.rsplit('/', 1)[0] + '/1', decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(params=['fake', pytest.param('private', marks=pytest.mark.integration)])
def flushable_redis(request: pytest.FixtureRequest) -> redis.Redis:
    """Like `redis_client`, but on a server of the test's own: for tests that flush scripts."""
    client: redis.Redis = request.getfixturevalue(f'{request.param}_redis')
    return client


@pytest.fixture
def key_prefix() -> str:
    return f'lctest-{uuid.uuid4().hex[:10]}'


@pytest.fixture
def make_settings(key_prefix: str) -> SettingsFactory:
    topology: dict[str, Any] = {'redis_url': REDIS_URL}
    if CLUSTER_URL:  # Celery's broker and RedBeat cannot use a cluster: they get the plain test Redis
        topology = {'redis_url': CLUSTER_URL, 'redis_cluster': True, 'broker_url': REDIS_URL,
                    'beat_redis_url': REDIS_URL}  # fmt: skip

    def make(**overrides: Any) -> Settings:
        return Settings(**{**topology, 'key_prefix': key_prefix, **overrides})

    return make


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(max_sessions=5)


@pytest.fixture
def fixed_clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def fake_redis() -> Iterator[redis.Redis]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def real_redis(key_prefix: str) -> Iterator[redis.Redis]:
    client = connect_real_redis()
    yield client
    for key in client.scan_iter(match='{' + key_prefix + '}*', count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(params=['fake', pytest.param('real', marks=pytest.mark.integration)])
def redis_client(request: pytest.FixtureRequest) -> redis.Redis:
    client: redis.Redis = request.getfixturevalue(f'{request.param}_redis')
    return client


@pytest.fixture
def lc(settings: Settings, redis_client: redis.Redis, fixed_clock: FixedClock) -> Lifecycle:
    """A client on the parametrised Redis with a fixed clock."""
    return Lifecycle(settings, redis_client=redis_client, clock=fixed_clock)


@pytest.fixture(scope='session')
def mongo_server_url() -> Iterator[str]:
    """A MongoDB to talk to over the wire: LIFECYCLE_TEST_MONGO_URL, else SecantusDB started in-process."""
    if MONGO_URL:
        yield MONGO_URL
        return
    from secantus import SecantusDBServer  # type: ignore[import-untyped]  # ships no type information

    with tempfile.TemporaryDirectory(prefix='lifecycle-mongo-') as storage:
        server = SecantusDBServer(port=0, storage_path=storage)
        server.start()
        yield server.uri
        server.stop()


@pytest.fixture
def mongo_database(mongo_server_url: str, key_prefix: str) -> Iterator[str]:
    """A database of this test's own, dropped afterwards."""
    name = key_prefix.replace('-', '_')
    yield name
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_server_url)
    with client:
        client.drop_database(name)


@pytest.fixture
def mongo_admin(mongo_server_url: str) -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
    """A client for fail points; every fail point is switched off afterwards."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_server_url)
    yield client
    client.admin.command('configureFailPoint', 'failCommand', mode='off')
    client.close()


@pytest.fixture
def make_reaper_settings(make_settings: SettingsFactory, mongo_server_url: str, mongo_database: str) -> SettingsFactory:
    def make(**overrides: Any) -> Settings:
        return make_settings(**{'mongo_url': mongo_server_url, 'mongo_database': mongo_database, **overrides})

    return make
