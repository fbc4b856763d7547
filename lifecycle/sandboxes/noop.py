"""NoopDriver: for apps whose sandboxes need no teardown, or that tear them down on the `evicted` notice."""

from __future__ import annotations

from lifecycle.sandboxes.base import SandboxLease


class NoopDriver:
    """Releases nothing and knows no sandboxes."""

    def release(self, session_id: str, reason: str) -> None:
        return None

    def leases(self) -> list[SandboxLease]:
        return []
