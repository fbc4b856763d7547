"""The pool on a Redis Cluster (issue 13): three masters on loopback (`redis-server --cluster-enabled yes`, joined
by `redis-cli --cluster create`). Every key of a pool shares one hash tag, so every script runs on one node;
the client's and the sweeps' test subset runs against the cluster, and the cap holds under real concurrency."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.cluster import RedisCluster

from lifecycle import CapacityExceeded, Lifecycle
from lifecycle.errors import BackendUnavailable
from lifecycle.ops.embedded import free_port
from lifecycle.settings import Settings
from tests.conftest import REDIS_URL, stop_private_redis

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]
# The client's and the sweeps' tests whose correctness depends on Redis (each with its real-Redis cases).
SUBSET = [
    'tests/unit/test_pool.py',
    'tests/unit/test_claims.py',
    'tests/unit/test_async_pool.py',
    'tests/unit/test_runs.py',
    'tests/integration/test_eviction.py',
    'tests/integration/test_pool_under_concurrency.py',
    'tests/integration/test_reaping_without_checkpoints.py',
    'tests/integration/test_outside_damage.py',
    'tests/integration/test_async_durable.py',
]


@pytest.fixture(scope='module')
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-master Redis Cluster of the test's own, on free loopback ports."""
    server, cli = shutil.which('redis-server'), shutil.which('redis-cli')
    if server is None or cli is None:
        if os.environ.get('CI'):
            raise RuntimeError('redis-server and redis-cli must be on PATH')
        pytest.skip('no redis-server / redis-cli on PATH for a Redis Cluster')
    directory = tmp_path_factory.mktemp('cluster')
    ports = cluster_ports(3)
    command = [server, '--bind', '127.0.0.1', '--cluster-enabled', 'yes', '--dir', str(directory), '--save', '',
               '--appendonly', 'no']  # fmt: skip
    processes = []
    for port in ports:
        node = [*command, '--port', str(port), '--cluster-config-file', f'nodes-{port}.conf']
        processes.append(subprocess.Popen(node, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        for port in ports:
            wait_until(lambda p=port: answers(cli, p), f'node {port} to start')
        subprocess.run([cli, '--cluster', 'create', *(f'127.0.0.1:{port}' for port in ports), '--cluster-replicas', '0',
                        '--cluster-yes'], check=True, capture_output=True, timeout=60)  # fmt: skip
        wait_until(lambda: cluster_ok(cli, ports), 'the cluster to cover every slot')
        yield f'redis://127.0.0.1:{ports[0]}/0'
    finally:
        for process in processes:
            stop_private_redis(process)


def cluster_ports(n: int) -> list[int]:
    """`n` free loopback ports whose cluster bus ports (each + 10000) are free too, so below 55536."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port < 55_536 and port not in ports and free(port + 10_000):
            ports.append(port)
    return ports


def free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(('127.0.0.1', port)) != 0


def answers(cli: str, port: int) -> bool:
    return subprocess.run([cli, '-p', str(port), 'ping'], capture_output=True, text=True).stdout.strip() == 'PONG'


def cluster_ok(cli: str, ports: list[int]) -> bool:
    def info(port: int) -> str:
        return subprocess.run([cli, '-p', str(port), 'cluster', 'info'], capture_output=True, text=True).stdout

    return all('cluster_state:ok' in info(port) for port in ports)


def wait_until(condition: Any, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out waiting for {what}')
        time.sleep(0.1)


def cluster_settings(url: str, **overrides: Any) -> Settings:
    return Settings(redis_url=url, redis_cluster=True, broker_url=REDIS_URL, beat_redis_url=REDIS_URL,
                    key_prefix=f'lcc-{os.urandom(4).hex()}', **overrides)  # fmt: skip


@pytest.mark.timeout(900)  # a pytest run of its own: about 100 s here
def test_the_client_and_sweep_tests_pass_on_a_redis_cluster(cluster_url: str) -> None:
    """The subset above, run again with every real-Redis client and setting on the cluster."""
    env = {**os.environ, 'LIFECYCLE_TEST_REDIS_CLUSTER_URL': cluster_url}
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-k', 'not fake', *SUBSET],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ''
    print(f'\non the Redis Cluster: {summary}')
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert ' passed' in summary
    assert 'skipped' not in summary  # nothing in the subset may skip its real-Redis cases


def test_the_cap_holds_on_a_cluster_under_concurrent_reservations(cluster_url: str) -> None:
    settings = cluster_settings(cluster_url, max_sessions=10)
    admitted: list[str] = []
    refused = 0
    lock = threading.Lock()

    def reserve(lc: Lifecycle, worker: int) -> None:
        nonlocal refused
        for n in range(20):
            try:
                lc.activate(lc.reserve(f'api-{worker}'), f's{worker}-{n}')
                with lock:
                    admitted.append(f's{worker}-{n}')
            except CapacityExceeded:
                with lock:
                    refused += 1

    with Lifecycle(settings) as lc:
        threads = [threading.Thread(target=reserve, args=(lc, i)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = lc.stats()
        cluster: Any = lc.redis
        assert isinstance(cluster, RedisCluster)
        keys = list(cluster.scan_iter(match=lc.index.keys.prefix + '*'))
        owners = {cluster.get_node_from_key(key).name for key in keys}  # type: ignore[no-untyped-call]
        for key in keys:
            cluster.delete(key)
    assert (len(admitted), refused) == (10, 150)
    assert (stats.live, stats.slots) == (10, 10)
    assert len(owners) == 1  # every key of the pool on one node: its hash tag


def test_an_unreachable_cluster_is_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match=r'Redis Cluster at redis://127\.0\.0\.1:'):
        Lifecycle(cluster_settings(f'redis://127.0.0.1:{free_port()}/0'))


def test_lifecycle_time_comes_from_the_pools_node(cluster_url: str) -> None:
    with Lifecycle(cluster_settings(cluster_url)) as lc:  # the default clock: Redis server time
        cluster: Any = lc.redis
        node = cluster.get_node_from_key(lc.index.keys.prefix)
        seconds, micros = cluster.time(target_nodes=node)
        assert abs(lc.now_ms() - (seconds * 1000 + micros // 1000)) < 2_000
        assert lc.pool._at_pool() == {'target_nodes': node}
