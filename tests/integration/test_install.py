"""What each role installs: an API replica gets the client without the worker, the CLI or a web framework."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
CHECK = """
import sys, lifecycle
from lifecycle import AsyncLifecycle, Lifecycle, Settings
for heavy in ('celery', 'redbeat', 'rich', 'prometheus_client', 'flower', 'fastapi', 'starlette'):
    assert heavy not in sys.modules, heavy
    try:
        __import__(heavy)
    except ImportError:
        pass
    else:
        raise AssertionError(f'{heavy} was installed without being asked for')
print('client only:', Lifecycle.__name__, AsyncLifecycle.__name__, Settings().max_sessions)
"""


def test_the_package_without_extras_is_the_client_alone(tmp_path: Path) -> None:
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=120)
    pip = [str(venv / 'bin' / 'pip'), 'install', '--quiet', '--disable-pip-version-check']
    install = subprocess.run([*pip, str(ROOT)], capture_output=True, text=True, timeout=600, check=False)
    assert install.returncode == 0, install.stderr[-3000:]
    imported = subprocess.run([str(venv / 'bin' / 'python'), '-c', CHECK], capture_output=True, text=True,
                              timeout=60, check=False, cwd=tmp_path)  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert 'client only: Lifecycle AsyncLifecycle 200' in imported.stdout
    command = subprocess.run([str(venv / 'bin' / 'lifecycle'), 'status'], capture_output=True, text=True,
                             timeout=60, check=False, cwd=tmp_path)  # fmt: skip
    assert command.returncode == 2
    assert "needs the 'cli' extra" in command.stderr
