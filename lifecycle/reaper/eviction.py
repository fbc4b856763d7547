"""The eviction pipeline: claim -> durable MongoDB write -> sandbox release -> fenced finish.

Each step is safe to repeat and each can crash: a claim whose worker died is taken over by the next
sweep (`recover`), which completes it if MongoDB holds the durable write and rolls it back otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from lifecycle import policy
from lifecycle.errors import LifecycleError, PersistenceError
from lifecycle.models import InterruptedTurn, NoticeKind, ReapReason, SessionState, to_datetime
from lifecycle.policy import Order
from lifecycle.pool import calls, trail
from lifecycle.pool.calls import Call
from lifecycle.pool.claims import Claim, ClaimIndex, Step
from lifecycle.pool.executor import Executor
from lifecycle.pool.trail import TrailIndex
from lifecycle.sandboxes import SandboxDriver, SandboxError
from lifecycle.stores import Mark, MarkOutcome, SessionRecord, SnapshotStore

log = logging.getLogger(__name__)
GONE = ('not_live', 'gone')  # results about a session no longer in the pool: no trail to add to
EXPIRY_FAILURES_IN_A_ROW = 3  # then a batch's remaining expiry writes are skipped (they are best effort)


class Outcome(StrEnum):
    EVICTED = 'evicted'  # resumable in MongoDB, out of the pool
    EXPIRED = 'expired'  # ended at its hard deadline
    KEPT = 'kept'  # not due any more (busy, touched, claimed elsewhere, gone): left alone
    ABORTED = 'aborted'  # due, but the durable write failed, was refused or no longer covers it: still live
    ROLLED_BACK = 'rolled_back'  # recovery found no durable write that covers it: live again
    SKIPPED = 'skipped'  # Redis answered this session's step with an error: reported, the rest went on


@dataclass(frozen=True)
class EvictionResult:
    session_id: str
    reason: ReapReason
    outcome: Outcome
    detail: str = ''


def claim_record(claim: Claim) -> SessionRecord:
    """What MongoDB keeps of a claimed session (its record as the claim read it)."""
    assert claim.meta is not None
    meta, started = claim.meta, claim.turn_started_ms
    return SessionRecord(
        session_id=claim.session_id,
        owner=meta.owner,
        tenant=meta.tenant,
        profile=meta.profile,
        created_at=to_datetime(meta.created_ms),
        last_active_at=to_datetime(claim.last_active_ms),
        expires_at=to_datetime(claim.expires_at_ms),
        turn_seq=meta.turn_seq,
        interrupted_turn=InterruptedTurn(meta.turn_seq + 1, started, meta.owner) if started is not None else None,
        trail=claim.trail,
        tenure=meta.tenure,
    )


def grace_starts(pool: Executor, claims: ClaimIndex, session_ids: Sequence[str], lost: Sequence[str | None]
                 ) -> list[int | None]:  # fmt: skip
    """When the grace of each session's checkpoint request runs from (see `policy.grace_start`), given the lost
    replica that owns it (None: not an owner-lost eviction); one round trip."""
    owners = sorted({owner for owner in lost if owner})
    requested, lapsed = pool.run_many(
        [claims.checkpoint_requests(session_ids), calls.scores(pool.keys.replicas, owners)]
    )
    lapsed_at = dict(zip(owners, lapsed, strict=True))
    return [policy.grace_start(at, lapsed_at.get(owner) if owner else None)
            for at, owner in zip(requested, lost, strict=True)]  # fmt: skip


class Evictor:
    """Runs evictions for one worker process (or for `reserve(make_room=True)` in an API replica)."""

    def __init__(self, pool: Executor, store: SnapshotStore | None, driver: SandboxDriver) -> None:
        self.pool = pool
        self.settings = pool.settings
        self.claims = ClaimIndex(pool.settings, pool.keys)
        self.trail = TrailIndex(pool.keys, pool.settings.trail_length)
        self.store = store
        self.driver = driver

    def _crash_point(self, step: str) -> None:
        if self.settings.crash_at == step:
            log.error('crash_at=%s: sending %s to this worker (pid %d) on purpose', step, self.settings.crash_signal,
                      os.getpid())  # fmt: skip
            os.kill(os.getpid(), signal.Signals[self.settings.crash_signal])

    def _record(self, results: Sequence[EvictionResult]) -> list[EvictionResult]:
        """Log each decision (one line, with its fields), add them to the shared counters, and to the trail of each
        session still live (one that left takes its trail to MongoDB with its eviction or expiry write)."""
        counts: Counter[str] = Counter()
        decided = [(r.session_id, trail.entry(r.outcome.value, r.reason.value, r.detail)) for r in results
                   if r.outcome not in (Outcome.EVICTED, Outcome.EXPIRED) and r.detail not in GONE]  # fmt: skip
        for result in results:
            fields = {'session_id': result.session_id, 'reason': result.reason.value, 'outcome': result.outcome.value,
                      'detail': result.detail}  # fmt: skip
            level = logging.WARNING if result.outcome in (Outcome.ABORTED, Outcome.SKIPPED) else logging.INFO
            log.log(level, '%s %s (%s)%s', result.outcome, result.session_id, result.reason,
                    f': {result.detail}' if result.detail else '', extra=fields)  # fmt: skip
            if result.outcome is not Outcome.KEPT:
                name = f'{result.outcome}:{result.reason}'
                counts[f'{name}:{result.detail}' if result.outcome is Outcome.ABORTED else name] += 1
            elif result.detail == 'damaged':
                counts['damage:sessions_skipped'] += 1
        writes: list[Call[Any]] = [calls.increment(self.pool.keys.counters, name, n) for name, n in counts.items()]
        writes += self.trail.appends(self.pool.now_ms(), decided)
        if writes:
            self.pool.run_each(writes)
        return list(results)

    def evict(self, session_id: str, reason: ReapReason, bound: int | str = 0, observed_ms: int = 0) -> EvictionResult:
        """Evict one session if it is still due for `reason`; idempotent (a repeat finds nothing to claim)."""
        return self.evict_many([Order.of(session_id, reason, bound, observed_ms)])[0]

    def evict_many(self, orders: Sequence[Order]) -> list[EvictionResult]:
        """Evict each ordered session that is still due, in batches: a round trip per step, not per session.

        Claims go out in one pipeline, the durable writes as one multi-document MongoDB update, the
        fenced finishes in one pipeline per release window. Each session keeps its own claim, fence
        and outcome.
        """
        return self._record(self._evict_many(orders))

    def _evict_many(self, orders: Sequence[Order]) -> list[EvictionResult]:
        results: dict[int, EvictionResult] = {}
        wanted = {}
        for i, order in enumerate(orders):
            if order.reason is not ReapReason.EXPIRED and self.store is None:
                results[i] = EvictionResult(order.session_id, order.reason, Outcome.KEPT, 'persistence is off')
            else:
                wanted[i] = order
        now = self.pool.now_ms()
        replies = self.pool.run_each(
            [self.claims.claim(o.session_id, o.reason, now, o.bound, o.observed_ms) for o in wanted.values()]
        )
        claimed: dict[int, Claim] = {}
        for (i, order), reply in zip(wanted.items(), replies, strict=True):
            if isinstance(reply, LifecycleError):
                results[i] = EvictionResult(order.session_id, order.reason, Outcome.SKIPPED, f'error: {reply}')
            elif isinstance(reply, str):
                results[i] = EvictionResult(order.session_id, order.reason, Outcome.KEPT, reply)
            else:
                claimed[i] = reply
        if not claimed:
            return [results[i] for i in range(len(orders))]
        self._crash_point('after_claim')
        self._end_expired([c for c in claimed.values() if c.reason is ReapReason.EXPIRED])
        refused, waived = self._persist({i: c for i, c in claimed.items() if c.reason is not ReapReason.EXPIRED})
        results.update(refused)
        self._crash_point('after_persist')
        for i, result in self._complete({i: c for i, c in claimed.items() if i not in refused}).items():
            # Evicted without the checkpoint its last turns needed: its owner was asked and did not answer.
            results[i] = replace(result, detail='checkpoint_waived') if i in waived and not result.detail else result
        return [results[i] for i in range(len(orders))]

    def _persist(self, claims: Mapping[int, Claim]) -> tuple[dict[int, EvictionResult], set[int]]:
        """The durable writes, in one batch; aborts the claim of every session not written, and says why.
        Also returns the claims written without the checkpoint they would need (waived after the grace)."""
        if not claims:
            return {}, set()
        assert self.store is not None
        marks = self._marks(claims)
        waived = {i for i, mark in zip(claims, marks, strict=True) if mark.waived}
        try:
            outcomes = self.store.mark_resumable(marks)
        except PersistenceError as exc:
            log.warning('eviction write of %d sessions failed: %s', len(claims), exc)
            return self._fence_off(claims, marks, exc), set()
        refused = {i: (c, outcome) for (i, c), outcome in zip(claims.items(), outcomes, strict=True)
                   if outcome is not MarkOutcome.DONE}  # fmt: skip
        now = self.pool.now_ms()
        calls: list[Call[Any]] = [self.claims.abort(c) for c, _ in refused.values()]
        unsaved = [c for c, outcome in refused.values() if outcome is MarkOutcome.NOT_CHECKPOINTED]
        calls += [self.claims.notice(c.meta.owner, NoticeKind.CHECKPOINT_REQUESTED, c.session_id, c.reason.value, now,
                                     c.meta.tenure) for c in unsaved if c.meta is not None]  # fmt: skip
        if unsaved:  # when its owner was first asked: the grace of on_missing_checkpoint counts from then
            calls.append(self.claims.request_checkpoints([c.session_id for c in unsaved], now))
        if calls:
            self.pool.run_each(calls)
        # FENCED: a newer token (recovery, a restore) owns the session now; this eviction merely lost the race.
        return {i: EvictionResult(c.session_id, c.reason,
                                  Outcome.KEPT if outcome is MarkOutcome.FENCED else Outcome.ABORTED, outcome.value)
                for i, (c, outcome) in refused.items()}, waived - set(refused)  # fmt: skip

    def _fence_off(self, claims: Mapping[int, Claim], marks: Sequence[Mark], failure: PersistenceError
                   ) -> dict[int, EvictionResult]:  # fmt: skip
        """After a failed eviction write: shut it out in MongoDB (fences raised past the batch's tokens, what it
        marked put back to live) before the sessions go back to their apps, so a write that lands late changes
        nothing. If that fails too and the first write may yet land, the claims stay: once their lease runs out,
        recovery raises the fence first and completes or rolls back each by what MongoDB holds."""
        assert self.store is not None
        try:
            self.store.fence_off(marks, self.pool.run(calls.next_token(self.pool.keys.epoch)))
        except PersistenceError as exc:
            if failure.may_land:
                log.warning('%d claims left to recovery: their eviction write may still land, and MongoDB did not '
                            'take the fence: %s', len(claims), exc)  # fmt: skip
                return {i: EvictionResult(c.session_id, c.reason, Outcome.SKIPPED, 'persistence_error')
                        for i, c in claims.items()}  # fmt: skip
        self.pool.run_each([self.claims.abort(c) for c in claims.values()])
        return {i: EvictionResult(c.session_id, c.reason, Outcome.ABORTED, 'persistence_error')
                for i, c in claims.items()}  # fmt: skip

    def _marks(self, claims: Mapping[int, Claim]) -> list[Mark]:
        """Each claim's eviction write, with whether it needs a checkpoint (see `policy.needs_checkpoint`)."""
        required, now = self.settings.require_checkpoint, self.pool.now_ms()
        lost = [c.meta.owner if c.reason is ReapReason.OWNER_LOST and c.meta is not None else None
                for c in claims.values()]  # fmt: skip
        starts = grace_starts(self.pool, self.claims, [c.session_id for c in claims.values()], lost)
        marks = []
        for claim, asked in zip(claims.values(), starts, strict=True):
            seq = claim.meta.turn_seq if claim.meta is not None else 0
            waive_after_s = self.settings.waive_after_s(owner_lost=claim.reason is ReapReason.OWNER_LOST)
            needs = policy.needs_checkpoint(seq, asked, now, required=required, waive_after_s=waive_after_s)
            strict = policy.needs_checkpoint(seq, asked, now, required=required, waive_after_s=None)
            marks.append(Mark(claim_record(claim), claim.token, claim.reason, needs, waived=strict and not needs,
                              at=to_datetime(now)))  # fmt: skip
        return marks

    def _end_expired(self, claims: Sequence[Claim]) -> None:
        """Best effort, with a short timeout: the hard deadline is hard, whatever MongoDB says.

        After `EXPIRY_FAILURES_IN_A_ROW` writes in a row fail, the rest of the batch expires without
        trying (MongoDB is down or slow, and each try would cost the whole timeout).
        """
        if self.store is None:
            return
        failures: list[PersistenceError] = []
        for claim in claims:
            if claim.meta is None:
                continue
            if len(failures) < EXPIRY_FAILURES_IN_A_ROW:
                try:
                    self.store.end(claim_record(claim), SessionState.EXPIRED, claim.token,
                                   self.settings.expiry_write_timeout_ms)  # fmt: skip
                    failures.clear()
                    continue
                except PersistenceError as exc:
                    failures.append(exc)
            log.warning('expiring %s without its MongoDB write: %s', claim.session_id, failures[-1])

    def _complete(self, claims: Mapping[int, Claim]) -> dict[int, EvictionResult]:
        """Release the sandboxes, then leave the pool, each checked against its token.

        In windows of a third of a lease: the window's claims are confirmed and extended (one
        pipeline), their sandboxes released, and they leave the pool (one pipeline) before the next
        window's claims are confirmed, so however slow the sandbox driver, no release or finish runs
        on a claim that recovery could have taken over. Once releasing has taken half the task time
        limit, the remaining sandboxes go to the orphan list (the expiry sweep releases them) and
        their sessions finish at once: a slow driver never keeps a batch past its time limit.
        """
        results: dict[int, EvictionResult] = {}
        pending, give_up_at = dict(claims), time.monotonic() + self.settings.task_time_limit_s / 2
        while pending:
            now = self.pool.now_ms()
            confirmed = self.pool.run_each([self.claims.extend(c, now) for c in pending.values()])
            window_ends = time.monotonic() + self.settings.claim_lease_s / 3
            window, later = {}, {}
            for (i, claim), step in zip(pending.items(), confirmed, strict=True):
                if step is not Step.DONE:
                    results[i] = self._stopped(claim, step, released=False)
                elif time.monotonic() > window_ends:
                    later[i] = claim  # confirmed again, in the next window
                else:
                    if time.monotonic() < give_up_at:
                        self._release(claim)
                    else:
                        self._defer_release(claim, 'the batch spent its time on slow releases')
                    window[i] = claim
            if window:
                self._crash_point('after_release')
                results.update(self._finish(window))
            pending = later
        return results

    def _finish(self, claims: Mapping[int, Claim]) -> dict[int, EvictionResult]:
        """Take the claimed sessions out of the pool (one pipeline), each only under its own token."""
        now = self.pool.now_ms()
        finished = self.pool.run_each([self.claims.finish(c, now) for c in claims.values()])
        results = {}
        for (i, claim), step in zip(claims.items(), finished, strict=True):
            if step is not Step.DONE:
                results[i] = self._stopped(claim, step, released=True)
            else:
                outcome = Outcome.EXPIRED if claim.reason is ReapReason.EXPIRED else Outcome.EVICTED
                results[i] = EvictionResult(claim.session_id, claim.reason, outcome)
        return results

    def _stopped(self, claim: Claim, step: Step | LifecycleError, *, released: bool) -> EvictionResult:
        """The result of a claim whose fenced step did not go through."""
        when = 'after its sandbox release' if released else 'before its sandbox release'
        if isinstance(step, LifecycleError):
            # The claim stays: once its lease runs out, the next sweep's recovery resolves it.
            log.warning('eviction of %s stopped %s: %s', claim.session_id, when, step)
            return EvictionResult(claim.session_id, claim.reason, Outcome.SKIPPED, f'error: {step}')
        if step is Step.FENCED:
            log.warning('eviction of %s fenced off %s: token %d is stale', claim.session_id, when, claim.token)
            return EvictionResult(claim.session_id, claim.reason, Outcome.KEPT, 'fenced')
        log.warning('eviction of %s undone %s: a turn finished since the claim, its durable write no longer covers '
                    'the session', claim.session_id, when)  # fmt: skip
        return self._undo(claim, Outcome.ABORTED, sandbox_released=released)

    def _undo(self, claim: Claim, outcome: Outcome, *, sandbox_released: bool) -> EvictionResult:
        """A turn finished after the durable write: put MongoDB back to live (under the claim's own token),
        then give the claim up. If MongoDB fails, the claim stays for recovery, which retries the undo.

        The session stays live with its turns; if its sandbox was already released, its owner is told
        (`sandbox_reset`), as after a restore: losing a sandbox is recoverable, losing a finished turn is not.
        """
        assert self.store is not None  # only evictions with a durable write have a sequence to check
        try:
            self.store.revert([Mark(claim_record(claim), claim.token, claim.reason)])
        except PersistenceError as exc:
            log.warning('undo of the eviction of %s postponed to recovery: %s', claim.session_id, exc)
            return EvictionResult(claim.session_id, claim.reason, Outcome.SKIPPED, 'persistence_error')
        calls: list[Call[Any]] = [self.claims.abort(claim)]
        if sandbox_released and claim.meta is not None:
            calls.append(self.claims.notice(claim.meta.owner, NoticeKind.SANDBOX_RESET, claim.session_id,
                                            'turn_finished', self.pool.now_ms()))  # fmt: skip
        self.pool.run_each(calls)
        return EvictionResult(claim.session_id, claim.reason, outcome, 'turn_finished')

    def _release(self, claim: Claim) -> None:
        try:
            self.driver.release(claim.session_id, claim.reason.value)
        except Exception as exc:  # SandboxError, or a driver's bug: the durable path is done, the slot comes back
            self._defer_release(claim, str(exc) if isinstance(exc, SandboxError) else repr(exc))

    def _defer_release(self, claim: Claim, why: str) -> None:
        """The session's state is durable; its slot must come back now. The orphan list retries the release."""
        log.warning('sandbox of %s not released, will retry: %s', claim.session_id, why)
        self.pool.run(calls.add(self.pool.keys.orphans, [(claim.session_id, self.pool.now_ms())]))

    def recover(self, session_id: str) -> EvictionResult | None:
        """Resolve a claim whose lease ran out: complete it if its durable write landed, else roll it back."""
        result = self._recover(session_id)
        return self._record([result])[0] if result is not None else None

    def _recover(self, session_id: str) -> EvictionResult | None:
        takeover = self.pool.run(self.claims.reclaim(session_id, self.pool.now_ms()))
        if takeover is None:
            return None
        claim = takeover.claim
        if claim.meta is None:
            self.pool.run(self.claims.abort(claim))
            return EvictionResult(session_id, claim.reason, Outcome.KEPT, 'gone')
        if claim.reason is ReapReason.EXPIRED:
            self._end_expired([claim])
            return self._complete({0: claim})[0]
        if self.store is None:
            self.pool.run(self.claims.abort(claim))
            return EvictionResult(session_id, claim.reason, Outcome.ROLLED_BACK, 'persistence is off')
        try:
            # Raising the fence first shuts the stale worker's MongoDB write out, whatever it does next.
            before = self.store.raise_fence(session_id, claim.token)
        except PersistenceError as exc:
            log.warning('recovery of %s postponed: %s', session_id, exc)  # the claim stays; the next sweep retries
            return EvictionResult(session_id, claim.reason, Outcome.ABORTED, 'persistence_error')
        if policy.is_durably_evicted(before, takeover.old_token):
            if before is not None and policy.covers(before, claim.meta.turn_seq):
                log.info('recovery completes the eviction of %s (token %d)', session_id, takeover.old_token)
                return self._complete({0: claim})[0]
            # The crashed worker may have released the sandbox already: release it for certain, and say so.
            log.info('recovery rolls %s back to live: a turn finished after its eviction write', session_id)
            self._release(claim)
            return self._undo(claim, Outcome.ROLLED_BACK, sandbox_released=True)
        self.pool.run(self.claims.abort(claim))
        log.info('recovery rolls %s back to live: its eviction write never landed', session_id)
        return EvictionResult(session_id, claim.reason, Outcome.ROLLED_BACK)
