"""ClaimIndex: the Redis calls of the eviction pipeline (claim, finish, abort, reclaim) and of reconciliation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from lifecycle import validate
from lifecycle.errors import SessionDamaged
from lifecycle.models import NoticeKind, ReapReason
from lifecycle.pool.calls import Arg, Call, as_int
from lifecycle.pool.keys import Keys
from lifecycle.pool.sessions import Meta
from lifecycle.pool.trail import Trail, unpack
from lifecycle.settings import Settings

REASONS = {reason.value for reason in ReapReason}


class Step(IntEnum):
    """How a fenced step of an eviction (extend, finish) went."""

    DONE = 1
    FENCED = 0  # the claim is no longer this token's: a stale worker; nothing changed
    TURN_FINISHED = -1  # a turn finished since the claim: the durable write does not cover it; nothing changed

    @classmethod
    def of(cls, reply: Any) -> Step:
        return cls(as_int(reply))


@dataclass(frozen=True)
class Claim:
    """An eviction in flight: the session is REAPING under fencing `token` until finished or aborted."""

    session_id: str
    token: int
    reason: ReapReason
    meta: Meta | None  # None when a reclaimed session had already left the pool
    last_active_ms: int
    expires_at_ms: int
    turn_started_ms: int | None = None  # a turn in flight at the claim: when it began (0 unknown); None: none
    trail: Trail | None = None  # its decision trail as the claim read it


def in_flight(turn_started: Any, packed_trail: Any) -> tuple[int | None, Trail | None]:
    """A claim's turn in flight (its start, 0 unknown; None: no turn, the scripts' -1) and trail ('' none)."""
    started = as_int(turn_started)
    return (started if started >= 0 else None), unpack(packed_trail or None)


@dataclass(frozen=True)
class Takeover:
    """A stale claim taken over by recovery: `old_token` is the one a crashed or paused worker still holds."""

    claim: Claim
    old_token: int


@dataclass(frozen=True)
class Readmitted:
    """A session a rebuilt pool takes back, as MongoDB recorded its activation."""

    session_id: str
    owner: str
    tenant: str | None
    profile: str | None
    created_ms: int
    turn_seq: int
    expires_at_ms: int
    tenure: int | None = None


@dataclass(frozen=True)
class Drift:
    """What reconciliation found and repaired: outside damage (a lost key, a hand edit), never normal running."""

    purged_reservations: int  # expired reservations whose slots came back (normal: a creator that crashed)
    pool_drift: int  # slot counter minus truth, before the repair (a lost counter counts as 0)
    counter_missing: bool = False
    tenant_drift: int = 0  # tenant index members added or dropped
    tenant_index_rebuilt: bool = False  # the index had lost its marker (a lost key) and was rebuilt
    relinked: int = 0  # records whose live entry was gone, put back in the pool
    deadlines_restored: int = 0
    records_rebuilt: int = 0  # live sessions whose record was gone, given a stand-in
    malformed_records: int = 0  # records (or buckets) no script can read: left as they are, for an operator
    unrepaired_pages: int = 0  # pages Redis refused to repair (see the log); the next reconcile tries again
    foreign_entries: int = 0  # live entries whose id no session can have (a hand edit): removed

    @property
    def found(self) -> bool:
        """Whether any damage was found (expired reservations are not damage)."""
        return bool(
            self.pool_drift or self.counter_missing or self.tenant_drift or self.tenant_index_rebuilt
            or self.relinked or self.deadlines_restored or self.records_rebuilt or self.malformed_records
            or self.unrepaired_pages or self.foreign_entries
        )  # fmt: skip

    def counts(self) -> dict[str, int]:
        """The damage found, by kind (for the shared counters the exporter serves); zeros left out."""
        found = {
            'pool_counter': int(bool(self.pool_drift or self.counter_missing)),
            'tenant_index_members': self.tenant_drift,
            'tenant_index_lost': int(self.tenant_index_rebuilt),
            'records_relinked': self.relinked,
            'deadlines_restored': self.deadlines_restored,
            'records_rebuilt': self.records_rebuilt,
            'malformed_records': self.malformed_records,
            'unrepaired_pages': self.unrepaired_pages,
            'foreign_entries': self.foreign_entries,
        }
        return {kind: n for kind, n in found.items() if n}

    def describe(self) -> str:
        """One line for logs and the CLI: every figure that is not zero."""
        figures = {
            'pool counter': f'{self.pool_drift:+d}' + (' (missing)' if self.counter_missing else ''),
            'tenant index': f'{self.tenant_drift} members' + (' (rebuilt)' if self.tenant_index_rebuilt else ''),
            'relinked': self.relinked,
            'deadlines restored': self.deadlines_restored,
            'records rebuilt': self.records_rebuilt,
            'malformed records': self.malformed_records,
            'unrepaired pages': self.unrepaired_pages,
            'foreign entries removed': self.foreign_entries,
        }
        shown = [f'{name} {value}' for name, value in figures.items() if value not in (0, '+0', '0 members')]
        return ', '.join(shown) or 'none'


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
            if as_int(reply[0]) != 1:
                return str(reply[1])
            return Claim(session_id, as_int(reply[1]), reason, Meta.unpack(reply[2]), as_int(reply[3]),
                         as_int(reply[4]), *in_flight(reply[5], reply[6]))  # fmt: skip

        return Call(
            parse,
            'claim_session',
            (
                k.live,
                k.deadline,
                k.busy,
                k.reaping,
                k.claims,
                k.meta_of(session_id),
                k.epoch,
                k.replicas,
                k.turns,
                k.pinned,
                k.trail,
                k.generation,
                k.verified,
            ),
            (session_id, reason.value, now_ms, lease_ms, bound, observed_ms),
        )

    def finish(self, claim: Claim, now_ms: int) -> Call[Step]:
        """Take the claimed session out of the pool if the claim is still `claim.token`'s; notify its owner."""
        k = self.keys
        kind = NoticeKind.EXPIRED if claim.reason is ReapReason.EXPIRED else NoticeKind.EVICTED
        owner = claim.meta.owner if claim.meta is not None else ''
        # As the index files it ('?' included): a member left behind would count against its tenant's cap.
        tenant = claim.meta.filed_under if claim.meta is not None else ''
        return Call(
            Step.of,
            'finish_eviction',
            (k.live, k.deadline, k.busy, k.turns, k.meta_of(claim.session_id), k.reaping, k.claims, k.slots,
             k.tenants, k.reservations, k.inbox(owner)),
            (claim.session_id, claim.token, now_ms, kind.value, claim.reason.value, self.settings.notice_maxlen,
             tenant),
        )  # fmt: skip

    def extend(self, claim: Claim, now_ms: int) -> Call[Step]:
        """Confirm the claim is still `claim.token`'s and extend its lease, unless a turn finished since it."""
        k = self.keys
        lease_ms = now_ms + self.settings.claim_lease_s * 1000
        return Call(
            Step.of,
            'extend_claim',
            (k.reaping, k.claims, k.meta_of(claim.session_id)),
            (claim.session_id, claim.token, lease_ms),
        )

    def abort(self, claim: Claim) -> Call[bool]:
        """Give up the eviction; the session stays live. A no-op for a claim that is no longer ours."""
        k = self.keys
        return Call(
            lambda reply: as_int(reply) == 1, 'abort_claim', (k.reaping, k.claims), (claim.session_id, claim.token)
        )

    def reclaim(self, session_id: str, now_ms: int) -> Call[Takeover | None]:
        """Take over a claim whose lease ran out, under a fresh token; None if it is current or gone."""
        k = self.keys
        lease_ms = now_ms + self.settings.claim_lease_s * 1000

        def parse(reply: list[Any]) -> Takeover | None:
            if as_int(reply[0]) != 1:
                return None
            try:
                meta = Meta.unpack(reply[4]) if reply[4] else None
            except SessionDamaged:
                meta = None  # recovery then gives the claim up: the session stays as it is for reconcile
            expires_at = as_int(reply[5]) if reply[5] is not None else 0
            reason = ReapReason(reply[3]) if reply[3] in REASONS else ReapReason.IDLE
            claim = Claim(session_id, as_int(reply[2]), reason, meta, 0, expires_at, *in_flight(reply[7], reply[8]))
            return Takeover(claim, as_int(reply[1]))

        return Call(
            parse,
            'reclaim_session',
            (k.reaping, k.claims, k.epoch, k.meta_of(session_id), k.live, k.deadline, k.turns, k.trail),
            (session_id, now_ms, lease_ms),
        )

    def forget_gone(self, kind: str, members: Sequence[str | bytes]) -> Call[int]:
        """Remove pins, tenant pin members or trails (`kind`: see forget_gone.lua) of sessions no longer live."""
        k = self.keys
        return Call(as_int, 'forget_gone', (k.live, k.pinned, k.pinned_tenants, k.trail), (kind, *members))

    def request_checkpoints(self, session_ids: Sequence[str], now_ms: int) -> Call[int]:
        """Remember when each session's owner was first asked for a checkpoint (kept until one comes)."""
        members: list[Arg] = []
        for session_id in session_ids:
            members += [now_ms, session_id]
        return Call(as_int, command=('ZADD', self.keys.unsaved, 'NX', *members))

    def checkpoint_requests(self, session_ids: Sequence[str]) -> Call[list[int | None]]:
        """When each session's owner was first asked for a checkpoint it has not given; None: never asked."""
        if not session_ids:
            return Call(lambda reply: [], command=('PING',))
        return Call(
            lambda reply: [None if score is None else as_int(score) for score in reply],
            command=('ZMSCORE', self.keys.unsaved, *session_ids),
        )

    def notice(
        self, owner: str, kind: NoticeKind, session_id: str, reason: str, now_ms: int, tenure: int | None = None
    ) -> Call[str]:
        """Post one notice to `owner`'s capped inbox (with the tenure of the session's life it is about)."""
        about: tuple[Arg, ...] = () if tenure is None else ('tenure', tenure)
        return Call(
            str,
            command=(
                'XADD', self.keys.inbox(owner), 'MAXLEN', '~', self.settings.notice_maxlen, '*',
                'kind', kind.value, 'session_id', session_id, 'reason', reason, 'at_ms', now_ms, *about,
            ),
        )  # fmt: skip

    def reconcile_counters(self, now_ms: int, rebuild_marker: str) -> Call[list[int]]:
        """Purge expired reservations, index their tenants, repair the slot counter; mark the tenant index
        complete if `rebuild_marker` (put in when the paged passes started) is still in it."""
        k = self.keys
        return Call(
            lambda reply: [as_int(n) for n in reply],
            'reconcile_counters',
            (k.live, k.reservations, k.slots, k.tenants),
            (now_ms, rebuild_marker),
        )

    def repair_records(self, buckets: Sequence[int], now_ms: int, fields: Sequence[str] = ()) -> Call[list[int]]:
        """One page of the record pass: relink, restore deadlines, index tenants (see repair_records.lua); with
        `fields`, only those records of the one bucket given (a page of a bucket too large for one script)."""
        k = self.keys
        max_ttl = ','.join(f'{name or ""}={self.settings.limits(name).max_ttl_s * 1000}'
                           for name in (None, *self.settings.profiles))  # fmt: skip
        return Call(
            lambda reply: [as_int(n) for n in reply],
            'repair_records',
            (k.live, k.deadline, k.tenants, *(k.meta_bucket(n) for n in buckets)),
            (now_ms, max_ttl, *fields),
        )

    def lost_replicas(self, now_ms: int) -> Call[list[str]]:
        """The replicas whose heartbeat lapsed by `now_ms` (an entry no replica could be is left out)."""

        def parse(reply: Any) -> list[str]:
            return [owner for owner in map(str, reply) if validate.is_identifier(owner)]

        return Call(parse, command=('ZRANGEBYSCORE', self.keys.replicas, '-inf', now_ms))

    def forget_replicas(self, lost: Sequence[str], now_ms: int) -> Call[int]:
        """Forget those of the `lost` replicas that own no session (see forget_replicas.lua)."""
        return Call(as_int, 'forget_replicas', (self.keys.replicas, self.keys.live), (now_ms, *lost))

    def rebuild_records(self, stand_ins: Mapping[str, tuple[int, str]], now_ms: int) -> Call[int]:
        """Stand-in records for live sessions that lost theirs: session id -> (turn sequence, tenant or '')."""
        k = self.keys
        args: list[Arg] = [now_ms, self.settings.max_ttl_s * 1000]
        for session_id, (seq, tenant) in stand_ins.items():
            args += [session_id, seq, tenant]
        buckets = (k.meta_of(s) for s in stand_ins)
        return Call(as_int, 'rebuild_records', (k.live, k.deadline, k.tenants, k.idle_recheck, *buckets), tuple(args))

    def readmit(self, missing: Sequence[Readmitted], kept: Sequence[Readmitted], now_ms: int) -> Call[tuple[int, int]]:
        """Take back sessions MongoDB says are live into a pool that lost them, and move on the turn sequences of
        those it `kept` (see readmit_sessions.lua): (how many taken back, how many moved on)."""
        k = self.keys
        args: list[Arg] = [now_ms]
        for d, held in [(d, '') for d in missing] + [(d, '1') for d in kept]:
            args += [d.session_id, d.owner, d.tenant or '', d.profile or '', d.created_ms, d.turn_seq, d.expires_at_ms,
                     '' if d.tenure is None else d.tenure, held]  # fmt: skip
        buckets = (k.meta_of(d.session_id) for d in (*missing, *kept))

        def parse(reply: list[Any]) -> tuple[int, int]:
            return as_int(reply[0]), as_int(reply[1])

        return Call(parse, 'readmit_sessions', (k.live, k.deadline, k.tenants, k.slots, k.closed, *buckets),
                    tuple(args))  # fmt: skip

    def raise_epoch(self, at_least: int) -> Call[int]:
        """Lift the fencing epoch to at least `at_least`."""
        return Call(as_int, 'raise_epoch', (self.keys.epoch,), (at_least,))

    def drop_stray_tenants(self, members: Sequence[str]) -> Call[int]:
        """Drop the tenant index members of this page that nothing backs any more."""
        k = self.keys
        buckets = [k.meta_of(m.split('|', 1)[1]) if '|' in m else k.tenants for m in members]
        return Call(as_int, 'drop_stray_tenants', (k.live, k.reservations, k.tenants, *buckets), tuple(members))

    def migrate_records(self, session_ids: Sequence[str]) -> Call[int]:
        """Move these sessions' records from the first layout's single hash into their buckets."""
        k = self.keys
        return Call(
            as_int, 'migrate_records', (k.legacy_meta, *(k.meta_of(s) for s in session_ids)), tuple(session_ids)
        )
