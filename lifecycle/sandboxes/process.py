"""ProcessDriver: sandboxes as local process groups that end themselves at their deadline."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from lifecycle import validate
from lifecycle.sandboxes.base import SandboxError, SandboxLease

log = logging.getLogger(__name__)


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (so a recycled pid is never mistaken for our process)."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return None
    return stat.rsplit(')', 1)[1].split()[19]


class ProcessDriver:
    """Starts each sandbox as a new process group under coreutils `timeout`, which kills it at the
    deadline even if every worker and API replica is dead; `release` kills the group early.

    Records live in `state_dir` (one JSON file per session), so any worker on the host can list them.
    """

    def __init__(self, state_dir: str | Path, *, grace_s: float = 5.0) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.grace_s = grace_s

    def _record(self, session_id: str) -> Path:
        return self.state_dir / f'{validate.identifier("session_id", session_id)}.json'

    def start(self, session_id: str, argv: Sequence[str], ttl_s: int) -> int:
        """Start `argv` as the session's sandbox, ending by itself after `ttl_s`; returns the group id."""
        deadline_ms = time.time_ns() // 1_000_000 + ttl_s * 1000
        kill_after = f'{max(1, int(self.grace_s))}s'
        process = subprocess.Popen(
            ['timeout', '--kill-after', kill_after, f'{ttl_s}s', *argv],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        record = {'pgid': process.pid, 'started': _start_time(process.pid), 'expires_at_ms': deadline_ms}
        self._record(session_id).write_text(json.dumps(record))
        # Reap it when it ends, whoever ends it, so no zombie is left behind in the starting process.
        threading.Thread(target=process.wait, name=f'sandbox-{session_id}', daemon=True).start()
        return process.pid

    def release(self, session_id: str, reason: str) -> None:
        path = self._record(session_id)
        try:
            record = json.loads(path.read_text())
            pgid, started = int(record['pgid']), record['started']
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise SandboxError(f'the record {path} of the sandbox of {session_id!r} is unreadable: {exc!r}') from exc
        if _start_time(pgid) == started:
            self._kill_group(session_id, pgid)
        path.unlink(missing_ok=True)

    def release_lease(self, lease: SandboxLease, reason: str) -> None:
        """Release the session's sandbox if it is still the one `lease` lists (same deadline), not a newer one."""
        try:
            record = json.loads(self._record(lease.session_id).read_text())
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and record.get('expires_at_ms') not in (None, lease.expires_at_ms):
            return
        self.release(lease.session_id, reason)

    def _kill_group(self, session_id: str, pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_s
            while time.monotonic() < deadline:
                os.killpg(pgid, 0)
                time.sleep(0.05)
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except PermissionError as exc:
            raise SandboxError(f'cannot signal the sandbox of {session_id!r} (group {pgid}): {exc}') from exc

    def leases(self) -> list[SandboxLease]:
        """Every recorded sandbox with its deadline; a record that cannot be read is reported and skipped,
        never fatal to the expiry sweep that asks."""
        leases = []
        for path in sorted(self.state_dir.glob('*.json')):
            try:
                record = json.loads(path.read_text())
                leases.append(SandboxLease(validate.identifier('session_id', path.stem), int(record['expires_at_ms'])))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning('sandbox record %s skipped: %r', path, exc)
        return leases
