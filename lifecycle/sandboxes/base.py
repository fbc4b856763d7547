"""The SandboxDriver protocol: release a session's sandbox, list sandboxes with their deadlines."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from lifecycle.errors import LifecycleError

log = logging.getLogger(__name__)


class SandboxError(LifecycleError):
    """A sandbox could not be released; the eviction goes on and the release is retried later."""


@dataclass(frozen=True)
class SandboxLease:
    """A sandbox the driver knows of, the deadline at which it ends itself and, where the driver knows them,
    when it started (for orphan detection) and its own id (to release exactly it)."""

    session_id: str
    expires_at_ms: int
    started_at_ms: int | None = None
    sandbox_id: str | None = None


class SandboxDriver(Protocol):
    """Releases sandboxes; every method is idempotent.

    A driver whose leases name their sandbox may also define `release_lease(lease, reason)`: tear down exactly
    the sandbox the lease lists, not a newer one its session started since (see `release_lease` below); and a
    driver that can move a running sandbox's own deadline, `extend_deadline(session_id, expires_at_ms) -> bool`
    (see `extend_sandbox`).
    """

    def release(self, session_id: str, reason: str) -> None:
        """Tear the session's sandbox down; a sandbox already gone is success. Raises SandboxError."""

    def leases(self) -> list[SandboxLease]:
        """Every sandbox the driver can see, with its deadline (for crash-safe expiry); [] if it cannot list."""


def release_lease(driver: SandboxDriver, lease: SandboxLease, reason: str) -> None:
    """Release the sandbox `lease` lists: exactly it where the driver can, else its session's."""
    exact = getattr(driver, 'release_lease', None)
    if exact is not None:
        exact(lease, reason)
    else:
        driver.release(lease.session_id, reason)


def extend_sandbox(driver: SandboxDriver, session_id: str, expires_at_ms: int) -> bool:
    """Tell the driver the session's hard deadline moved to `expires_at_ms`, if it can move its sandbox's own
    (`extend_deadline(session_id, expires_at_ms)`); True if it did. A driver that cannot (a container's deadline
    is fixed when it starts) keeps the one it has; a failure is logged, never raised: the session's deadline
    has moved either way."""
    extend = getattr(driver, 'extend_deadline', None)
    if extend is None:
        return False
    try:
        return bool(extend(session_id, expires_at_ms))
    except Exception as exc:  # SandboxError, or a driver's bug
        log.warning('the sandbox of %s keeps its own deadline: the driver could not move it: %r', session_id, exc)
        return False


def leftover_leases(leases: Iterable[SandboxLease], now_ms: int, orphan_grace_ms: int) -> list[SandboxLease]:
    """The sandboxes to release if their session turns out not to be held: past their deadline, or started
    at least the orphan grace ago (a sandbox is started between reserve and activate, so a younger one may
    be about to serve a session)."""
    return [lease for lease in leases if lease.expires_at_ms <= now_ms
            or (lease.started_at_ms is not None and lease.started_at_ms + orphan_grace_ms <= now_ms)]  # fmt: skip
