"""The eviction pipeline: claim -> durable MongoDB write -> sandbox release -> fenced finish.

Each step is safe to repeat and each can crash: a claim whose worker died is taken over by the next
sweep (`recover`), which completes it if MongoDB holds the durable write and rolls it back otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from lifecycle import policy
from lifecycle.claims import Claim, ClaimIndex
from lifecycle.errors import PersistenceError
from lifecycle.models import NoticeKind, ReapReason, SessionState, to_datetime
from lifecycle.sandboxes import SandboxDriver, SandboxError
from lifecycle.stores import MarkOutcome, SessionRecord, SnapshotStore

if TYPE_CHECKING:
    from lifecycle.client import Lifecycle

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    EVICTED = 'evicted'  # resumable in MongoDB, out of the pool
    EXPIRED = 'expired'  # ended at its hard deadline
    KEPT = 'kept'  # not due any more (busy, touched, claimed elsewhere, gone): left alone
    ABORTED = 'aborted'  # due, but the durable write failed or was refused: still live
    ROLLED_BACK = 'rolled_back'  # recovery found no durable write: live again


@dataclass(frozen=True)
class EvictionResult:
    session_id: str
    reason: ReapReason
    outcome: Outcome
    detail: str = ''


def claim_record(claim: Claim) -> SessionRecord:
    """What MongoDB keeps of a claimed session (its record as the claim read it)."""
    assert claim.meta is not None
    meta = claim.meta
    return SessionRecord(
        session_id=claim.session_id,
        owner=meta.owner,
        tenant=meta.tenant,
        profile=meta.profile,
        created_at=to_datetime(meta.created_ms),
        last_active_at=to_datetime(claim.last_active_ms),
        expires_at=to_datetime(claim.expires_at_ms),
        turn_seq=meta.turn_seq,
    )


class Evictor:
    """Runs evictions for one worker process (or for `reserve(make_room=True)` in an API replica)."""

    def __init__(self, lc: Lifecycle, store: SnapshotStore | None, driver: SandboxDriver) -> None:
        self.lc = lc
        self.settings = lc.settings
        self.claims = ClaimIndex(lc.settings, lc.index.keys)
        self.store = store
        self.driver = driver

    def _crash_point(self, step: str) -> None:
        if self.settings.crash_at == step:
            log.error('crash_at=%s: sending %s to this worker (pid %d) on purpose', step, self.settings.crash_signal,
                      os.getpid())  # fmt: skip
            os.kill(os.getpid(), signal.Signals[self.settings.crash_signal])

    def _record(self, result: EvictionResult) -> EvictionResult:
        """Log the decision (one line, with its fields) and add it to the shared counters."""
        fields = {'session_id': result.session_id, 'reason': result.reason.value, 'outcome': result.outcome.value,
                  'detail': result.detail}  # fmt: skip
        level = logging.WARNING if result.outcome is Outcome.ABORTED else logging.INFO
        log.log(level, '%s %s (%s)%s', result.outcome, result.session_id, result.reason,
                f': {result.detail}' if result.detail else '', extra=fields)  # fmt: skip
        if result.outcome is not Outcome.KEPT:
            name = f'{result.outcome}:{result.reason}'
            if result.outcome is Outcome.ABORTED:
                name += f':{result.detail}'
            self.lc.redis.hincrby(self.lc.index.keys.counters, name, 1)
        return result

    def evict(self, session_id: str, reason: ReapReason, bound: int | str = 0, observed_ms: int = 0) -> EvictionResult:
        """Evict one session if it is still due for `reason`; idempotent (a repeat finds nothing to claim)."""
        return self._record(self._evict(session_id, reason, bound, observed_ms))

    def _evict(self, session_id: str, reason: ReapReason, bound: int | str, observed_ms: int) -> EvictionResult:
        if reason is not ReapReason.EXPIRED and self.store is None:
            return EvictionResult(session_id, reason, Outcome.KEPT, 'persistence is off')
        claimed = self.lc.run(self.claims.claim(session_id, reason, self.lc.now_ms(), bound, observed_ms))
        if isinstance(claimed, str):
            return EvictionResult(session_id, reason, Outcome.KEPT, claimed)
        self._crash_point('after_claim')
        if reason is ReapReason.EXPIRED:
            self._end_expired(claimed)
        else:
            refused = self._persist(claimed)
            if refused is not None:
                return refused
        self._crash_point('after_persist')
        return self._complete(claimed)

    def _persist(self, claim: Claim) -> EvictionResult | None:
        """The durable write; on any failure or refusal, abort the claim and say why."""
        assert self.store is not None
        assert claim.meta is not None
        try:
            outcome = self.store.mark_resumable(claim_record(claim), claim.token, claim.reason,
                                                self.settings.require_checkpoint)  # fmt: skip
        except PersistenceError as exc:
            self.lc.run(self.claims.abort(claim))
            try:
                self.store.revert(claim.session_id, claim.token)  # the write may have landed (a write-concern error)
            except PersistenceError:
                log.warning('could not revert %s after a failed eviction write', claim.session_id)
            log.warning('eviction write of %s failed: %s', claim.session_id, exc)
            return EvictionResult(claim.session_id, claim.reason, Outcome.ABORTED, 'persistence_error')
        if outcome is MarkOutcome.DONE:
            return None
        self.lc.run(self.claims.abort(claim))
        if outcome is MarkOutcome.NOT_CHECKPOINTED:
            self.lc.run(self.claims.notice(claim.meta.owner, NoticeKind.CHECKPOINT_REQUESTED, claim.session_id,
                                           claim.reason.value, self.lc.now_ms()))  # fmt: skip
        return EvictionResult(claim.session_id, claim.reason, Outcome.ABORTED, outcome.value)

    def _end_expired(self, claim: Claim) -> None:
        """Best effort, with a short timeout: the hard deadline is hard, whatever MongoDB says."""
        if self.store is None or claim.meta is None:
            return
        try:
            self.store.end(
                claim_record(claim), SessionState.EXPIRED, claim.token, self.settings.expiry_write_timeout_ms
            )
        except PersistenceError as exc:
            log.warning('expiring %s without its MongoDB write: %s', claim.session_id, exc)

    def _complete(self, claim: Claim) -> EvictionResult:
        """Release the sandbox, then leave the pool, checked against the token."""
        if not self.lc.run(self.claims.extend(claim, self.lc.now_ms())):
            log.warning('eviction of %s fenced off before its sandbox release: token %d is stale',
                        claim.session_id, claim.token)  # fmt: skip
            return EvictionResult(claim.session_id, claim.reason, Outcome.KEPT, 'fenced')
        try:
            self.driver.release(claim.session_id, claim.reason.value)
        except SandboxError as exc:
            # The session's state is durable; the slot must come back. The orphan list retries the release.
            log.warning('sandbox of %s not released, will retry: %s', claim.session_id, exc)
            self.lc.redis.zadd(self.lc.index.keys.orphans, {claim.session_id: self.lc.now_ms()})
        self._crash_point('after_release')
        owner = claim.meta.owner if claim.meta is not None else ''
        if not self.lc.run(self.claims.finish(claim, owner, self.lc.now_ms())):
            log.warning('eviction of %s fenced off: token %d is stale', claim.session_id, claim.token)
            return EvictionResult(claim.session_id, claim.reason, Outcome.KEPT, 'fenced')
        outcome = Outcome.EXPIRED if claim.reason is ReapReason.EXPIRED else Outcome.EVICTED
        return EvictionResult(claim.session_id, claim.reason, outcome)

    def recover(self, session_id: str) -> EvictionResult | None:
        """Resolve a claim whose lease ran out: complete it if its durable write landed, else roll it back."""
        result = self._recover(session_id)
        return self._record(result) if result is not None else None

    def _recover(self, session_id: str) -> EvictionResult | None:
        takeover = self.lc.run(self.claims.reclaim(session_id, self.lc.now_ms()))
        if takeover is None:
            return None
        claim = takeover.claim
        if claim.meta is None:
            self.lc.run(self.claims.abort(claim))
            return EvictionResult(session_id, claim.reason, Outcome.KEPT, 'gone')
        if claim.reason is ReapReason.EXPIRED:
            self._end_expired(claim)
            return self._complete(claim)
        if self.store is None:
            self.lc.run(self.claims.abort(claim))
            return EvictionResult(session_id, claim.reason, Outcome.ROLLED_BACK, 'persistence is off')
        try:
            # Raising the fence first shuts the stale worker's MongoDB write out, whatever it does next.
            before = self.store.raise_fence(session_id, claim.token)
        except PersistenceError as exc:
            log.warning('recovery of %s postponed: %s', session_id, exc)  # the claim stays; the next sweep retries
            return EvictionResult(session_id, claim.reason, Outcome.ABORTED, 'persistence_error')
        if policy.is_durably_evicted(before, takeover.old_token):
            log.info('recovery completes the eviction of %s (token %d)', session_id, takeover.old_token)
            return self._complete(claim)
        self.lc.run(self.claims.abort(claim))
        log.info('recovery rolls %s back to live: its eviction write never landed', session_id)
        return EvictionResult(session_id, claim.reason, Outcome.ROLLED_BACK)
