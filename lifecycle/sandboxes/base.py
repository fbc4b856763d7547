"""The SandboxDriver protocol: release a session's sandbox, list sandboxes with their deadlines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lifecycle.errors import LifecycleError


class SandboxError(LifecycleError):
    """A sandbox could not be released; the eviction goes on and the release is retried later."""


@dataclass(frozen=True)
class SandboxLease:
    """A sandbox the driver knows of, and the deadline at which it ends itself."""

    session_id: str
    expires_at_ms: int


class SandboxDriver(Protocol):
    """Releases sandboxes; every method is idempotent."""

    def release(self, session_id: str, reason: str) -> None:
        """Tear the session's sandbox down; a sandbox already gone is success. Raises SandboxError."""

    def leases(self) -> list[SandboxLease]:
        """Every sandbox the driver can see, with its deadline (for crash-safe expiry); [] if it cannot list."""
