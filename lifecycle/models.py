"""Plain values that cross lifecycle's public surface: reservations, sessions, pool figures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


def to_datetime(epoch_ms: int) -> datetime:
    """Timezone-aware UTC datetime of an epoch-milliseconds score."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


def to_epoch_ms(moment: datetime) -> int:
    """The epoch milliseconds of a datetime (the inverse of `to_datetime`)."""
    return int(moment.timestamp() * 1000)


class SessionState(StrEnum):
    """Where a session is in its life (DESIGN.md section 2); values are stored in MongoDB."""

    LIVE = 'live'
    REAPING = 'reaping'
    RESUMABLE = 'resumable'
    EXPIRED = 'expired'
    CLOSED = 'closed'
    DELETED = 'deleted'  # resumable past resumable_retention_s: its snapshot and messages are gone


@dataclass(frozen=True)
class Limits:
    """The effective policy of one session profile."""

    idle_ttl_s: int
    default_ttl_s: int
    max_ttl_s: int


@dataclass(frozen=True)
class Reservation:
    """A slot held under the cap until `activate` or `release`, or until its lease runs out."""

    token: str
    owner: str
    tenant: str | None
    expires_at_ms: int

    @property
    def expires_at(self) -> datetime:
        return to_datetime(self.expires_at_ms)


@dataclass(frozen=True)
class InterruptedTurn:
    """A turn that was in flight when its session left the pool (its hard deadline passed mid-turn, its replica
    was lost mid-turn, or a turn never ended: a crash): recorded durably, so the app can say "your last request
    was cut off" instead of taking partial state for lost work."""

    seq: int  # the turn sequence it would have finished as
    started_at_ms: int  # 0: unknown (a turn begun by a version that did not record starts)
    owner: str  # the replica that ran it

    @property
    def started_at(self) -> datetime | None:
        return to_datetime(self.started_at_ms) if self.started_at_ms else None


@dataclass(frozen=True)
class SessionInfo:
    """A session as lifecycle sees it; `status()` never counts as activity."""

    session_id: str
    state: SessionState
    owner: str
    tenant: str | None
    profile: str | None
    created_at_ms: int
    last_active_ms: int
    expires_at_ms: int
    busy: bool
    turn_seq: int
    pinned: bool = False  # idle, LRU and make-room eviction leave it alone (see `pin`)
    interrupted_turn: InterruptedTurn | None = None  # a session no longer live: the turn its end cut off
    # The fencing token of the activation or restore that made this copy of the session (with MongoDB; from
    # activate() and restore()): pass it to checkpoint(), and a replica that paused across an eviction and a
    # restore elsewhere is refused (Fenced) instead of overwriting the new owner's state.
    tenure: int | None = None

    @property
    def created_at(self) -> datetime:
        return to_datetime(self.created_at_ms)

    @property
    def last_active(self) -> datetime:
        return to_datetime(self.last_active_ms)

    @property
    def expires_at(self) -> datetime:
        return to_datetime(self.expires_at_ms)


@dataclass(frozen=True)
class PoolStats:
    """Pool figures read in one atomic step; `slots` is the counter the cap is enforced on."""

    live: int
    reserved: int
    busy: int
    reaping: int
    cap: int
    slots: int


class ReapReason(StrEnum):
    """Why a worker takes a session out of the live pool; values are stored in MongoDB and notices."""

    IDLE = 'idle'
    LRU = 'lru'
    MAKE_ROOM = 'make_room'
    OWNER_LOST = 'owner_lost'
    EXPIRED = 'expired'


class SweepKind(StrEnum):
    """The sweeps beat schedules (one Celery task each); the value names its lock, counters and metrics."""

    IDLE = 'idle'
    LRU = 'lru'
    EXPIRED = 'expired'
    OWNER_LOST = 'owner_lost'  # as ReapReason's: one spelling (the CLI also takes owner-lost)
    WARNINGS = 'warnings'
    RECONCILE = 'reconcile'
    RUNS = 'runs'
    RETENTION = 'retention'  # resumable sessions past resumable_retention_s: deleted
    WORKTREES = 'worktrees'  # per host: every host with a worktree root sweeps its own


class NoticeKind(StrEnum):
    """What a notice in an owner's inbox tells it."""

    WARNING = 'warning'
    EVICTED = 'evicted'
    EXPIRED = 'expired'
    CHECKPOINT_REQUESTED = 'checkpoint_requested'
    SANDBOX_RESET = 'sandbox_reset'  # the session stays live, but its sandbox was released (an undone eviction)


@dataclass(frozen=True)
class Notice:
    """One entry of an API replica's inbox stream; `id` is the stream id to resume after."""

    id: str
    kind: NoticeKind
    session_id: str
    reason: str
    at_ms: int
    # The tenure of the session's life the notice is about (None: unknown): serve_notices checkpoints with it, so
    # a notice answered late, after the session was restored elsewhere, is refused instead of overwriting it.
    tenure: int | None = None


SANDBOX_RESET_NOTE = ('Note: this session was paused and has resumed. Its sandbox was reset: files, processes '
                      'and installed packages from before are gone; recreate what you need.')  # fmt: skip


def interrupted_note(turn: InterruptedTurn) -> str:
    """What to tell the agent of a turn its session's end cut off."""
    return (f'Note: the request of turn {turn.seq} was cut off before it finished; its partial work may be '
            'missing. Check before relying on it, or ask the user to repeat it.')  # fmt: skip


@dataclass(frozen=True)
class Restored:
    """A session made live again by `restore()`: its last checkpoint, a sandbox that was reset, the turn its
    eviction cut off (if one was in flight), and the note to give the agent about both.

    `note` is None when the app restored with `approval_pending=True`: a message injected while a tool call
    waits for approval would orphan that tool call's result. The app tells the agent after the approval.
    """

    session: SessionInfo
    snapshot: dict[str, Any] | None
    checkpoint_seq: int
    messages: list[dict[str, Any]]
    sandbox_reset: bool = True
    interrupted_turn: InterruptedTurn | None = None
    note: str | None = None
