"""TLS to Redis (`rediss://`), through settings alone: the client, its async twin and the sweeps, on a real
redis-server serving TLS only (issue 13: highly available Redis through settings; TLS is part of it)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lifecycle import AsyncLifecycle, Lifecycle
from lifecycle.models import SweepKind
from lifecycle.ops.embedded import free_port
from lifecycle.reaper.eviction import Evictor
from lifecycle.reaper.sweeps import Sweeper
from tests.conftest import SettingsFactory, stop_private_redis


def certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1."""
    ca_key, ca, key, csr, cert = (directory / n for n in ('ca.key', 'ca.crt', 'server.key', 'server.csr', 'server.crt'))

    def openssl(*args: str) -> None:
        subprocess.run(['openssl', *args], check=True, capture_output=True, timeout=60)

    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', str(ca_key), '-out', str(ca), '-days', '1',
            '-subj', '/CN=lifecycle test CA')  # fmt: skip
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', str(key), '-out', str(csr), '-subj', '/CN=127.0.0.1')
    extensions = directory / 'san.ext'
    extensions.write_text('subjectAltName=IP:127.0.0.1\n')
    openssl('x509', '-req', '-in', str(csr), '-CA', str(ca), '-CAkey', str(ca_key), '-CAcreateserial', '-out',
            str(cert), '-days', '1', '-extfile', str(extensions))  # fmt: skip
    return ca, cert, key


@pytest.fixture
def tls_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server speaking TLS only; the URL names the CA that signed it."""
    binary, openssl = shutil.which('redis-server'), shutil.which('openssl')
    if binary is None or openssl is None:
        pytest.skip('no redis-server or openssl here')
    ca, cert, key = certificates(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [binary, '--port', '0', '--tls-port', str(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
         '--tls-cert-file', str(cert), '--tls-key-file', str(key), '--tls-ca-cert-file', str(ca),
         '--tls-auth-clients', 'no'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f'rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required'
    deadline = time.monotonic() + 10
    while True:
        try:
            with redis.Redis.from_url(url) as probe:
                probe.ping()
            break
        except Exception:
            if time.monotonic() > deadline or process.poll() is not None:
                stop_private_redis(process)
                raise
            time.sleep(0.1)
    yield url
    stop_private_redis(process)


def test_the_pool_runs_over_tls_from_its_url_alone(tls_url: str, make_reaper_settings: SettingsFactory) -> None:
    settings = make_reaper_settings(redis_url=tls_url, max_sessions=2)
    with Lifecycle(settings) as lc:
        assert lc.redis.connection_pool.connection_class.__name__ == 'SSLConnection'
        lc.activate(lc.reserve('api-1', 'acme'), 't1')
        with lc.turn('t1'):
            pass
        info = lc.status('t1')
        assert info is not None
        assert info.turn_seq == 1
        report = Sweeper(lc.pool, Evictor(lc.pool, lc.store, lc.driver), lambda orders: None).sweep(
            SweepKind.RECONCILE, dedupe=False
        )
        assert report.drift is not None
        assert not report.drift.found
        assert lc.stats().live == 1

    async def main() -> None:
        async with AsyncLifecycle(settings) as alc:
            await alc.activate(await alc.reserve('api-2'), 't2')
            assert (await alc.stats()).live == 2

    asyncio.run(main())
