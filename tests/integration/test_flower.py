"""Flower started as the README says: no endpoint answers anyone without credentials but the operator."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from lifecycle.ops.embedded import free_port
from lifecycle.ops.embedded import owned_env as environment
from tests.conftest import SettingsFactory

README = Path(__file__).parents[2] / 'README.md'
ENDPOINTS = ['/', '/workers', '/tasks', '/api/workers', '/api/tasks', '/metrics', '/healthcheck', '/broker']


def readme_flower_command() -> list[str]:
    """The Flower command line the README tells operators to run (from 'celery' on, on its line)."""
    line = next(line for line in README.read_text().splitlines() if 'celery -A workers flower' in line and '&&' in line)
    return shlex.split(line[line.index('celery -A workers flower') :].split('#')[0])


def listening_addresses(port: int) -> set[str]:
    """The local addresses sockets listen on for `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.rsplit(':', 1)
            if state == '0A' and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def test_flower_as_the_readme_starts_it_is_closed_to_everyone_but_the_operator(
    make_settings: SettingsFactory, private_redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    command = [*readme_flower_command(), f'--port={port}']
    assert '--basic-auth=ops:change-me' in command
    settings = make_settings(broker_url=private_redis_url.rsplit('/', 1)[0] + '/3')
    log = open(tmp_path / 'flower.log', 'wb')  # noqa: SIM115 (closed below)
    flower = subprocess.Popen([sys.executable, '-m', *command], env=environment(settings), stdout=log,
                              stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not listening_addresses(port):
            assert flower.poll() is None, (tmp_path / 'flower.log').read_text()
            assert time.monotonic() < deadline, 'Flower did not start'
            time.sleep(0.2)
        # Bound to loopback only: nobody on the network reaches any endpoint, credentials or not.
        assert listening_addresses(port) <= {'0100007F', '00000000000000000000000001000000'}
        # On loopback, every page of tasks and workers asks for the credentials.
        for path in ENDPOINTS:
            if path not in ('/metrics', '/healthcheck'):
                assert status(f'http://127.0.0.1:{port}{path}') == 401, path
    finally:
        flower.terminate()
        flower.wait(15)
        log.close()
    assert re.search(r'Traceback', (tmp_path / 'flower.log').read_text()) is None
