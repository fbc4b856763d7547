"""Errors raised by lifecycle; expected outcomes are return values, not exceptions."""

from __future__ import annotations


class LifecycleError(Exception):
    """Base class for errors raised by lifecycle."""


class ConfigurationError(LifecycleError, ValueError):
    """Settings are inconsistent, or a server is unfit to run lifecycle."""


class InvalidArgument(LifecycleError, ValueError):
    """A caller passed a value lifecycle refuses (a malformed id, say); nothing was written."""


class InvalidTTL(InvalidArgument):
    """`ttl_seconds` is not a whole number of seconds within 1..max_ttl_s."""


class BackendUnavailable(LifecycleError):
    """Redis (or MongoDB) could not be reached; the call had no effect or is safe to retry."""


class CapacityExceeded(LifecycleError):
    """The pool (or the tenant) is at its cap; no slot was taken."""

    def __init__(self, live: int, reserved: int, cap: int, tenant: str | None = None) -> None:
        self.live = live
        self.reserved = reserved
        self.cap = cap
        self.tenant = tenant
        scope = f'tenant {tenant!r}' if tenant is not None else 'pool'
        super().__init__(f'{scope} is at capacity ({live} live + {reserved} reserved / cap {cap})')


class PinLimitReached(LifecycleError):
    """As many sessions as `max_pinned` (or `max_pinned_per_tenant`) allows are pinned; nothing was pinned."""

    def __init__(self, pinned: int, limit: int, tenant: str | None = None) -> None:
        self.pinned = pinned
        self.limit = limit
        self.tenant = tenant
        scope = f'tenant {tenant!r}' if tenant is not None else 'the pool'
        super().__init__(f'{scope} has {pinned} pinned sessions, its limit is {limit}: unpin one first')


class ReservationLost(LifecycleError):
    """The reservation expired (its lease ran out) or was released; its slot is back in the pool."""


class SessionExists(LifecycleError):
    """A session with this id is already live."""


class SessionNotLive(LifecycleError):
    """The session is not in the live pool (never activated, closed, evicted or expired)."""


class SessionReaping(LifecycleError):
    """A worker is evicting the session right now; retry shortly, then restore it."""


class SessionDamaged(LifecycleError):
    """Redis holds only part of the session (its record or deadline was lost or hand-edited); nothing was
    changed. The reconcile sweep repairs it; retry after that."""


class PoolRecovering(LifecycleError):
    """The pool cannot count what a call needs (a lost key: the tenant index, say) until a sweep rebuilds it;
    nothing was admitted. Retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f'{message}; retry in {retry_after_s} s')


class PoolUninitialised(LifecycleError):
    """Internal: the pool has no generation marker; the client initialises it (or finds its state lost)."""


class PoolUnverified(PoolUninitialised):
    """Internal: Redis restarted or failed over since the pool was verified; the client verifies it (or finds
    it must wait for the expiry sweep to)."""


class Fenced(LifecycleError):
    """A newer write already holds the session (another replica's later checkpoint, say): this one was
    refused and changed nothing."""


class ScriptFailed(LifecycleError):
    """Redis answered a call with an error (a server fault or a state no script expects); the call changed
    nothing after the point it failed, and the rest of its batch went on."""


class PersistenceError(LifecycleError):
    """MongoDB did not durably acknowledge a write; nothing was evicted.

    `may_land`: whether the write may have applied, or may still apply (a timeout, a lost connection, a
    write-concern error). False only when the server answered with a refusal: then nothing of it is left to land.
    """

    def __init__(self, message: str, *, may_land: bool = True) -> None:
        super().__init__(message)
        self.may_land = may_land


class RunStateError(LifecycleError):
    """A run is not in the state the call needs: appending to a finished or dropped run, starting a running one."""
