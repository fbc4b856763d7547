"""ClaimIndex: the Redis calls of the eviction pipeline (claim, finish, abort, reclaim) and of reconciliation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lifecycle.keys import META_BUCKETS, Keys
from lifecycle.models import NoticeKind, ReapReason
from lifecycle.settings import Settings
from lifecycle.state import Arg, Call, Meta, _int


@dataclass(frozen=True)
class Claim:
    """An eviction in flight: the session is REAPING under fencing `token` until finished or aborted."""

    session_id: str
    token: int
    reason: ReapReason
    meta: Meta | None  # None when a reclaimed session had already left the pool
    last_active_ms: int
    expires_at_ms: int


@dataclass(frozen=True)
class Takeover:
    """A stale claim taken over by recovery: `old_token` is the one a crashed or paused worker still holds."""

    claim: Claim
    old_token: int


@dataclass(frozen=True)
class Drift:
    """What reconciliation found and repaired."""

    purged_reservations: int
    pool_drift: int  # counter minus truth, before the repair
    tenant_drift: int | None  # None: the pool was too large to recount tenants in one step


class ClaimIndex:
    """Builds the Redis calls that move a session through REAPING."""

    def __init__(self, settings: Settings, keys: Keys | None = None) -> None:
        self.settings = settings
        self.keys = keys or Keys.for_prefix(settings.key_prefix)

    def claim(
        self, session_id: str, reason: ReapReason, now_ms: int, bound: Arg = 0, observed_ms: int = 0
    ) -> Call[Claim | str]:
        """Claim the session if it is still due for `reason`; returns the Claim or why it was left alone.

        `bound` is the reason's condition: idle and make_room, the latest last_active that is due;
        lru, the soft cap; owner_lost, the lost owner. `observed_ms` is the activity an LRU sweep saw.
        """
        k = self.keys
        lease_ms = now_ms + self.settings.claim_lease_s * 1000

        def parse(reply: list[Any]) -> Claim | str:
            if _int(reply[0]) != 1:
                return str(reply[1])
            return Claim(session_id, _int(reply[1]), reason, Meta.unpack(reply[2]), _int(reply[3]), _int(reply[4]))

        return Call(
            parse,
            'claim_session',
            (k.live, k.deadline, k.busy, k.reaping, k.claims, k.meta_of(session_id), k.epoch, k.replicas),
            (session_id, reason.value, now_ms, lease_ms, bound, observed_ms),
        )

    def finish(self, claim: Claim, owner: str, now_ms: int) -> Call[bool]:
        """Take the claimed session out of the pool if the claim is still `claim.token`'s; notify `owner`."""
        k = self.keys
        kind = NoticeKind.EXPIRED if claim.reason is ReapReason.EXPIRED else NoticeKind.EVICTED
        bucket = k.meta_of(claim.session_id)
        return Call(
            lambda reply: _int(reply) == 1,
            'finish_eviction',
            (k.live, k.deadline, k.busy, k.turns, bucket, k.reaping, k.claims, k.slots, k.tenant_slots, k.inbox(owner)),
            (claim.session_id, claim.token, now_ms, kind.value, claim.reason.value, self.settings.notice_maxlen),
        )

    def extend(self, claim: Claim, now_ms: int) -> Call[bool]:
        """Confirm the claim is still `claim.token`'s and extend its lease; False if it was taken over."""
        k = self.keys
        lease_ms = now_ms + self.settings.claim_lease_s * 1000
        return Call(
            lambda reply: _int(reply) == 1,
            'extend_claim',
            (k.reaping, k.claims),
            (claim.session_id, claim.token, lease_ms),
        )

    def abort(self, claim: Claim) -> Call[bool]:
        """Give up the eviction; the session stays live. A no-op for a claim that is no longer ours."""
        k = self.keys
        return Call(
            lambda reply: _int(reply) == 1, 'abort_claim', (k.reaping, k.claims), (claim.session_id, claim.token)
        )

    def reclaim(self, session_id: str, now_ms: int) -> Call[Takeover | None]:
        """Take over a claim whose lease ran out, under a fresh token; None if it is current or gone."""
        k = self.keys
        lease_ms = now_ms + self.settings.claim_lease_s * 1000

        def parse(reply: list[Any]) -> Takeover | None:
            if _int(reply[0]) != 1:
                return None
            meta = Meta.unpack(reply[4]) if reply[4] else None
            expires_at = _int(reply[5]) if reply[5] is not None else 0
            claim = Claim(session_id, _int(reply[2]), ReapReason(reply[3]), meta, 0, expires_at)
            return Takeover(claim, _int(reply[1]))

        return Call(
            parse,
            'reclaim_session',
            (k.reaping, k.claims, k.epoch, k.meta_of(session_id), k.live, k.deadline),
            (session_id, now_ms, lease_ms),
        )

    def notice(self, owner: str, kind: NoticeKind, session_id: str, reason: str, now_ms: int) -> Call[str]:
        """Post one notice to `owner`'s capped inbox."""
        return Call(
            str,
            command=(
                'XADD', self.keys.inbox(owner), 'MAXLEN', '~', self.settings.notice_maxlen, '*',
                'kind', kind.value, 'session_id', session_id, 'reason', reason, 'at_ms', now_ms,
            ),
        )  # fmt: skip

    def reconcile(self, now_ms: int) -> Call[Drift]:
        """Recompute the slot counters from the sets, repair them, and report the drift."""
        k = self.keys
        return Call(
            lambda r: Drift(_int(r[0]), _int(r[1]), None if _int(r[2]) < 0 else _int(r[2])),
            'reconcile_counters',
            (k.live, k.reservations, k.slots, k.tenant_slots),
            (now_ms, self.settings.reconcile_tenant_limit, k.meta_bucket_prefix, META_BUCKETS),
        )

    def migrate_records(self, session_ids: Sequence[str]) -> Call[int]:
        """Move these sessions' records from the first layout's single hash into their buckets."""
        k = self.keys
        return Call(_int, 'migrate_records', (k.legacy_meta, *(k.meta_of(s) for s in session_ids)), tuple(session_ids))
