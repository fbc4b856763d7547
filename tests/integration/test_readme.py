"""The README's client snippet runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from lifecycle import Lifecycle
from lifecycle.ops.embedded import owned_env as environment
from tests.conftest import SettingsFactory
from tests.integration.conftest import Spawn, worker_args

README = Path(__file__).parents[2] / 'README.md'


def test_the_readme_client_example_runs_as_written_and_a_real_worker_reaps_its_idle_session(
    make_reaper_settings: SettingsFactory, broker: str, spawn: Spawn
) -> None:
    """The example never checkpoints by hand for the reaper: its serve_notices and its after-turn checkpoint
    are what let a real worker, scheduled by a real beat, evict its idle session as resumable."""
    example = re.search(r'## Using the client\n\n.*?```python\n(.*?)```', README.read_text(), re.S)
    assert example is not None
    settings = make_reaper_settings(broker_url=broker, idle_ttl_s=3, idle_interval_s=1, warn_before_s=1)
    spawn(settings, *worker_args('reaper'))
    spawn(settings, 'beat')
    done = subprocess.run([sys.executable, '-c', example.group(1)], env=environment(settings), capture_output=True,
                          text=True, timeout=90, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith('ends hard at ')
    assert lines[1:] == ['echo: hello', 'the session is now resumable', 'echo: back again']
    lc = Lifecycle(settings)
    assert lc.redis.hget(lc.index.keys.counters, 'evicted:idle') == '1'
    lc.disconnect()


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
