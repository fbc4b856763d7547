"""The servers a demo or a bench starts for itself go with it, even when it is killed outright (SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from lifecycle.ops.embedded import mongo_reachable, reachable
from tests.integration.conftest import wait_for

STARTS_BOTH = """
import json, sys, time
from contextlib import ExitStack
from lifecycle.ops.embedded import start_mongo, start_redis
stack = ExitStack()
print(json.dumps([start_redis(stack, [], reuse_configured=False), start_mongo(stack, [])]), flush=True)
time.sleep(600)
"""


def answers(redis_url: str, mongo_url: str) -> tuple[bool, bool]:
    return reachable(redis_url), mongo_reachable(mongo_url)


def test_a_demo_killed_outright_leaves_no_server_running(tmp_path: Path) -> None:
    # Its temporary directories in tmp_path: nothing of the killed process is left to clean up but them.
    env = {**{k: v for k, v in os.environ.items() if k != 'LIFECYCLE_MONGO_URL'}, 'TMPDIR': str(tmp_path)}
    with subprocess.Popen([sys.executable, '-c', STARTS_BOTH], stdout=subprocess.PIPE, env=env) as parent:
        try:
            assert parent.stdout is not None
            redis_url, mongo_url = json.loads(parent.stdout.readline())
            assert answers(redis_url, mongo_url) == (True, True)
            parent.send_signal(signal.SIGKILL)  # no ExitStack, no atexit: only the kernel can tell the servers
            parent.wait(10)
            wait_for(lambda: answers(redis_url, mongo_url) == (False, False), 20, 'both servers to stop with it')
        finally:
            if parent.poll() is None:
                parent.kill()
