"""Services a demo or a benchmark starts for itself, and stops: Redis, MongoDB, child processes."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from typing import Any

import pymongo
import pymongo.errors
import redis

from lifecycle.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port: int = s.getsockname()[1]
    return port


def reachable(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def start_redis(stack: ExitStack, notes: list[str], *, reuse_configured: bool = True) -> str:
    """LIFECYCLE_REDIS_URL if it answers (and `reuse_configured`); else a private redis-server on a free
    port; else fakeredis over TCP."""
    configured = os.environ.get('LIFECYCLE_REDIS_URL')
    if reuse_configured and configured and reachable(configured):
        notes.append(f'Redis: {configured.split("@")[-1]} (yours; the demo uses its own key prefix)')
        return configured
    port = free_port()
    if shutil.which('redis-server'):
        process = subprocess.Popen(
            ['redis-server', '--port', str(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=dies_with_parent,
        )  # fmt: skip
        stack.callback(stop_process, process)
        url = f'redis://127.0.0.1:{port}/0'
        wait_until(lambda: reachable(url), 10, 'redis-server to start')
        notes.append(f'Redis: a private redis-server on port {port}')
        return url
    from fakeredis import TcpFakeServer

    server = TcpFakeServer(('127.0.0.1', port), server_type='redis')
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stack.callback(server.shutdown)
    notes.append(f'Redis: no redis-server on PATH, so an in-process fakeredis TCP server on port {port} (slow)')
    return f'redis://127.0.0.1:{port}/0'


def start_mongo(stack: ExitStack, notes: list[str]) -> str:
    """LIFECYCLE_MONGO_URL if set; else SecantusDB (a MongoDB-wire server) in a process of its own: in this one,
    its polling server threads would share the GIL with what a demo or a benchmark measures."""
    configured = os.environ.get('LIFECYCLE_MONGO_URL')
    if configured:
        notes.append(f'MongoDB: {configured.split("@")[-1]} (yours; the demo uses its own database)')
        return configured
    storage = stack.enter_context(tempfile.TemporaryDirectory(prefix='lifecycle-demo-mongo-'))
    port = free_port()
    config = os.path.join(storage, 'secantusd.toml')  # an empty one: no secantusd.toml of the machine's applies
    with open(config, 'w'):
        pass
    log = os.path.join(storage, 'secantusd.log')
    with open(log, 'wb') as written:
        process = subprocess.Popen([sys.executable, '-m', 'secantus', '--config', config, '--host', '127.0.0.1',
                                    '--port', str(port), '--storage-path', os.path.join(storage, 'data'),
                                    '--log-level', 'WARNING', '--enable-test-commands'],
                                   stdout=written, stderr=subprocess.STDOUT, preexec_fn=dies_with_parent)  # fmt: skip
    stack.callback(stop_process, process)
    url = f'mongodb://127.0.0.1:{port}/?directConnection=true'
    wait_until(lambda: mongo_answers(url, process, log), 60, 'SecantusDB to start')
    notes.append(f'MongoDB: SecantusDB in a process of its own on port {port}')
    return url


def mongo_answers(url: str, process: subprocess.Popen[bytes], log: str) -> bool:
    if process.poll() is not None:
        with open(log, errors='replace') as said:
            raise RuntimeError(f'SecantusDB exited with {process.returncode} before it answered: {said.read()[-2000:]}')
    return mongo_reachable(url)


def mongo_reachable(url: str) -> bool:
    client: pymongo.MongoClient[dict[str, Any]]
    with pymongo.MongoClient(url, serverSelectionTimeoutMS=500) as client:
        try:
            client.admin.command('ping')
        except pymongo.errors.PyMongoError:
            return False
    return True


def dies_with_parent() -> None:
    """In a child, before it runs its program (Linux): SIGTERM once the process that started it is gone, so a demo
    or a bench killed outright (SIGKILL: no cleanup of its own runs) leaves no server behind. `prctl` is looked up
    once, at import, in the parent: the forked child of a threaded process must not take the loader's lock."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PRCTL = ctypes.CDLL(None).prctl if sys.platform == 'linux' else None


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_child(process: Any) -> None:
    """Stop a multiprocessing child: politely, then not."""
    if process.is_alive():
        process.terminate()
        process.join(10)
    if process.is_alive():
        process.kill()
        process.join()


def wait_until(predicate: Any, within_s: float, what: str, every_s: float = 0.1) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f'timed out waiting for {what}')
        time.sleep(every_s)


def owned_env(settings: Settings) -> dict[str, str]:
    """This process's environment with the LIFECYCLE_* variables that reproduce `settings` in a child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('LIFECYCLE_')}
    for name, value in settings.model_dump(mode='json', exclude_none=True).items():
        env[f'LIFECYCLE_{name.upper()}'] = value if isinstance(value, str) else json.dumps(value)
    return env
