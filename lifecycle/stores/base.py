"""The SnapshotStore protocol: the durable side of every session (MongoDB in production)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from lifecycle.models import InterruptedTurn, ReapReason, SessionState
from lifecycle.pool.trail import Trail


class MarkOutcome(StrEnum):
    """How a conditional eviction write ended (a write that failed raises PersistenceError instead)."""

    DONE = 'done'
    NOT_CHECKPOINTED = 'not_checkpointed'  # no checkpoint covers the last finished turn
    FENCED = 'fenced'  # a newer token already wrote this session
    ENDED = 'ended'  # the document says expired or closed


@dataclass(frozen=True)
class SessionRecord:
    """What an eviction writes about a session besides its state."""

    session_id: str
    owner: str
    tenant: str | None
    profile: str | None
    created_at: datetime
    last_active_at: datetime
    expires_at: datetime
    turn_seq: int
    interrupted_turn: InterruptedTurn | None = None  # a turn in flight when it left the pool
    trail: Trail | None = None  # its decision trail when it left the pool
    tenure: int | None = None  # the life Redis held (None: any); an end of it never lands on a later life


@dataclass(frozen=True)
class Mark:
    """One eviction write: mark `record`'s session resumable under fencing `token`.

    `needs_checkpoint`: only if a checkpoint covers its last finished turn (see `policy.needs_checkpoint`);
    `waived`: it would need one, but its owner was asked and the grace ran out (recorded in the document).
    `at`: when the eviction was decided, by lifecycle time (Redis's clock), recorded as `evicted_at` and judged
    by retention on the same clock; None: the writer's clock.
    """

    record: SessionRecord
    token: int
    reason: ReapReason
    needs_checkpoint: bool = True
    waived: bool = False
    at: datetime | None = None

    @staticmethod
    def evicted_at(marks: Sequence[Mark]) -> datetime:
        """A batch's `evicted_at`: its marks' time (one sweep decided them), else this host's clock."""
        return next((mark.at for mark in marks if mark.at is not None), None) or datetime.now(UTC)


class SnapshotStore(Protocol):
    """Durable session documents, each write conditional on a fencing token."""

    def close(self) -> None:
        """Disconnect."""

    def ensure_indexes(self) -> None:
        """Create the indexes the store relies on (idempotent; called at start)."""

    def checkpoint(
        self,
        session_id: str,
        snapshot: Mapping[str, Any],
        messages: Sequence[Mapping[str, Any]] | None,
        turn_seq: int,
        order: int,
        tenure: int | None = None,
    ) -> None:
        """Durably save the app's snapshot (messages first, ordered), only while the document is live, holds no
        later checkpoint and, given a `tenure` (the token of the activation or restore the caller's copy of the
        session came from), is still of that tenure (SessionNotLive / Fenced, nothing that counts written);
        raises PersistenceError. New messages go after those of every checkpoint with a lower `order` (a fresh
        fencing token: one counter orders every replica's checkpoints, whatever their clocks say); none written
        by a newer tenure is overwritten, and messages count once their checkpoint commits."""

    def mark_resumable(self, marks: Sequence[Mark]) -> list[MarkOutcome]:
        """Durably mark sessions resumable, each under its token and its own checkpoint condition, in one
        batch; an outcome per mark. Sessions with no document that need no checkpoint get one.

        Raises PersistenceError when the batch's durability is unknown (any failure but a refusal):
        then none of it counts, and the caller fences the batch off (`fence_off`).
        """

    def revert(self, marks: Sequence[Mark]) -> None:
        """Undo `mark_resumable` of these marks, each only where its own token wrote (a turn finished after the
        write); one write for the batch."""

    def fence_off(self, marks: Sequence[Mark], token: int) -> None:
        """After a failed `mark_resumable`: raise each mark's fence to at least `token` (a fresh one, above every
        mark's), so a write of the batch that lands late changes nothing, and put back to live each document its
        own mark made resumable; a missing document is created live. One write for the batch; PersistenceError."""

    def end(self, record: SessionRecord, state: SessionState, token: int, timeout_ms: int) -> bool:
        """Mark the session expired or closed under `token`; False when a later life than the record's holds the
        document (the end was of a stale copy: nothing written). PersistenceError."""

    def extend(self, session_id: str, created_at: datetime, expires_at: datetime) -> bool:
        """Move the recorded hard deadline of the session's life that began at `created_at` to at least
        `expires_at` (never back: concurrent extensions converge on the latest); False when no live or resumable
        document of that life exists. PersistenceError."""

    def raise_fence(self, session_id: str, token: int) -> Mapping[str, Any] | None:
        """Atomically raise the session's fence to `token`; returns the document as it was before."""

    def restore(self, session_id: str, token: int, owner: str) -> Mapping[str, Any] | None:
        """Flip a resumable session back to live under `token`; returns the document as it was, or None if it was
        not resumable under an older fence."""

    def load(self, session_id: str) -> Mapping[str, Any] | None:
        """The session document, or None."""

    def load_many(self, session_ids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        """The documents of those sessions that have one (`LOAD_MANY_FIELDS` only: state, checkpoint, pool, life),
        by session id."""

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        """The checkpointed messages of a session, in order."""

    def activated(self, record: SessionRecord, token: int, pool: str) -> None:
        """Durably record a session just activated in pool `pool`, live under `token`: what a pool whose Redis
        lost its state is rebuilt from. SessionExists if MongoDB holds it resumable (restore it instead), Fenced
        if a newer token wrote it; PersistenceError."""

    def generation_of(self, pool: str) -> str | None:
        """The generation MongoDB recorded for pool `pool`, or None: a pool never initialised."""

    def claim_generation(self, pool: str, generation: str) -> str:
        """The generation of pool `pool`: `generation` if this is the pool's first, else the one recorded first."""

    def announce_owner(self, pool: str, owner: str) -> None:
        """Record that replica `owner` of pool `pool` heartbeats: after a rebuild, its sessions are vouched for
        only while it goes on heartbeating (see `Rebuilder`)."""

    def heartbeating_owners(self, pool: str) -> list[str]:
        """Every replica of pool `pool` that ever announced it heartbeats."""

    def live_documents(self, pool: str, after: str, limit: int) -> list[Mapping[str, Any]]:
        """A page of the documents MongoDB says are live in pool `pool`, by session id after `after`."""

    def raise_fences(self, session_ids: Sequence[str], token: int) -> None:
        """Raise these sessions' fences to at least `token`: writes under an older one are refused from now on."""

    def resumable_before(self, pool: str, before: datetime, limit: int) -> list[str]:
        """Up to `limit` sessions of pool `pool` resumable since before `before` (evicted then, not restored)."""

    def delete_resumable(self, pool: str, before: datetime, limit: int) -> tuple[int, int]:
        """Delete up to `limit` of them: each document (still resumable, evicted before `before`: a restore that
        got there first keeps it) becomes a 'deleted' tombstone without its snapshot, then the messages of up
        to `limit` tombstones are deleted (a crash between the two steps leaves them for the next call).
        Returns (tombstoned, message sets deleted); PersistenceError."""

    def highest_fence(self) -> int:
        """The highest fencing token any document holds (0 if none): a rebuilt pool's epoch starts above it."""
