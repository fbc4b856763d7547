"""The README's client snippet runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import redis

from tests.conftest import REDIS_URL

README = Path(__file__).parents[2] / 'README.md'


def test_the_readme_client_snippet_runs(real_redis: redis.Redis, key_prefix: str) -> None:
    snippet = re.search(r'## Using the client\n\n```python\n(.*?)```', README.read_text(), re.S)
    assert snippet is not None
    env = {**os.environ, 'LIFECYCLE_REDIS_URL': REDIS_URL, 'LIFECYCLE_KEY_PREFIX': key_prefix}
    done = subprocess.run([sys.executable, '-c', snippet.group(1)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'ends hard at' in done.stdout
    assert "session_id='chat-42'" in done.stdout


def test_ci_runs_the_readme_commands_verbatim() -> None:
    commands = re.search(r'## The two commands\n\n```bash\n(.*?)```', README.read_text(), re.S)
    assert commands is not None
    ci = (README.parent / '.ci' / 'run').read_text()
    lines = [line for line in commands.group(1).splitlines() if line and not line.startswith('#')]
    assert len(lines) == 3
    for line in lines:
        assert line in ci.splitlines(), line


def test_the_readme_documents_every_setting() -> None:
    from lifecycle.settings import Settings

    documented = {name.lower() for name in re.findall(r'LIFECYCLE_([A-Z_]+)', README.read_text())}
    assert set(Settings.model_fields) - documented == set()
