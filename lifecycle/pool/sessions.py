"""SessionIndex: every Redis read and write of session state, as calls that a sync or async client runs.

Each method validates its input, then returns a `Call`: one Redis round trip (a Lua script or one
raw command) and the function that reads its reply. Nothing here does I/O, so the sync and async
clients share every argument and every reply rule, and tests can inspect a call without Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from lifecycle import validate
from lifecycle.errors import (
    CapacityExceeded,
    Fenced,
    InvalidArgument,
    InvalidTTL,
    PinLimitReached,
    PoolRecovering,
    PoolUninitialised,
    PoolUnverified,
    ReservationLost,
    SessionDamaged,
    SessionExists,
    SessionNotLive,
    SessionReaping,
)
from lifecycle.models import Notice, NoticeKind, PoolStats, Reservation, SessionInfo, SessionState
from lifecycle.pool.calls import Arg, Call, as_int, next_token, scored
from lifecycle.pool.keys import Keys
from lifecycle.settings import HARD_MAX_TTL_S, Settings

log = logging.getLogger(__name__)

# How many expired reservations one reserve call gives back at most; the sweep purges the rest.
PURGE_LIMIT = 64
UNKNOWN_TENANT = '?'  # in a record: its tenant was lost with the tenant index (see _lib.lua); never a valid id


@dataclass(frozen=True)
class Meta:
    """The packed per-session record ('owner|tenant|profile|created_ms|turn_seq|tenure'; see _lib.lua)."""

    owner: str
    tenant: str | None
    profile: str | None
    created_ms: int
    turn_seq: int
    filed_under: str = ''  # the tenant index files it under this: the tenant, '?' (see below), or '' for none
    tenure: int | None = None  # the fencing token of this life (None: written before tenures, or a stand-in)

    @classmethod
    def unpack(cls, record: str) -> Meta:
        """The record's fields; SessionDamaged if it is not a record these scripts wrote (a hand edit)."""
        parts = record.split('|') if isinstance(record, str) else []
        if len(parts) not in (5, 6) or not all(part.isascii() and part.isdigit() for part in parts[3:]):
            raise SessionDamaged(f'session record {record!r} is malformed; the reconcile sweep reports it')
        owner, tenant, profile, created, seq = parts[:5]
        # '?': a stand-in record whose tenant outside damage erased. The scripts count it against every capped
        # tenant; to the app (and in MongoDB, so a restore can admit it again) it has none.
        return cls(owner, tenant if tenant not in ('', UNKNOWN_TENANT) else None, profile or None, int(created),
                   int(seq), tenant, int(parts[5]) if len(parts) == 6 else None)  # fmt: skip


NOTHING_STAMPED: Call[int] = Call(lambda reply: 0, command=('PING',))  # a batch of no stamps: nothing to send


def stale(session_id: str, tenure: int | None, changed: str = 'nothing was changed') -> Fenced:
    """The refusal of a call made with a tenure the session's record no longer holds (see _lib.lua's stale)."""
    return Fenced(f'session {session_id!r} was evicted and restored or activated again since tenure {tenure}: '
                  f'this copy of it is stale, {changed}')  # fmt: skip


def tenure_arg(tenure: int | None) -> Arg:
    """A caller's tenure as a script argument ('' none); InvalidArgument unless it is a fencing token."""
    return '' if tenure is None else validate.optional_token('tenure', tenure)  # type: ignore[return-value]


def _parse_notices(reply: Any) -> tuple[list[Notice], str | None]:
    """The notices of an XREAD reply, and the id of the last entry read (None: nothing arrived).

    An entry no notice could be (a kind from a newer version, a foreign writer, a hand edit) is logged and
    passed over: the reader moves past it, never stuck re-reading it, and the notices behind it get through.
    """
    if not reply:
        return [], None
    entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
    notices = []
    for entry_id, f in entries:
        try:
            tenure = f.get('tenure')
            notices.append(Notice(entry_id, NoticeKind(f['kind']), str(f['session_id']), str(f.get('reason', '')),
                                  as_int(f.get('at_ms', 0)), as_int(tenure) if tenure else None))  # fmt: skip
        except (KeyError, ValueError, TypeError):
            log.warning('notice %s passed over: %r is no notice this version reads', entry_id, f)
    return notices, (str(entries[-1][0]) if entries else None)


def member(token: str, owner: str, tenant: str | None) -> str:
    """A reservation's sorted-set member, 'token|owner|tenant': all a reservation needs, in one entry."""
    return f'{token}|{owner}|{tenant or ""}'


def reservation_member(reservation: object) -> str:
    """The member of a Reservation the caller hands back; InvalidArgument unless it is one with valid ids."""
    if not isinstance(reservation, Reservation):
        raise InvalidArgument(f'reservation must be a Reservation from reserve(), got {reservation!r}')
    token = validate.identifier('reservation token', reservation.token)
    owner = validate.identifier('reservation owner', reservation.owner)
    tenant = validate.optional_identifier('reservation tenant', reservation.tenant)
    return member(token, owner, tenant)


def check_ttl(ttl_seconds: object, max_ttl_s: int) -> int:
    """Return `ttl_seconds` if it is a whole number of seconds in 1..max_ttl_s."""
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise InvalidTTL(f'ttl_seconds must be a whole number of seconds, got {ttl_seconds!r}')
    if not 1 <= ttl_seconds <= max_ttl_s:
        raise InvalidTTL(f'ttl_seconds={ttl_seconds} is outside 1..{max_ttl_s}')
    return ttl_seconds


@dataclass(frozen=True)
class Closed:
    """A session `close` ended: as it was, and the fencing token of its durable record."""

    info: SessionInfo
    token: int


@dataclass(frozen=True)
class PoolState:
    """What reserve_slot checks before it admits: the generation marker, and the pool verified on this server's
    replication history (a restart or failover starts a new one)."""

    initialised: bool
    verified: bool
    replication_id: str

    @property
    def ready(self) -> bool:
        return self.initialised and self.verified


class SessionIndex:
    """Builds the Redis calls of every pool transition; one atomic script per transition."""

    def __init__(self, settings: Settings, keys: Keys | None = None) -> None:
        self.settings = settings
        self.keys = keys or Keys.for_prefix(settings.key_prefix)

    def reserve(self, owner: str, tenant: str | None, token: str, now_ms: int) -> Call[Reservation]:
        """Hold one slot under the pool and tenant caps; idempotent per token."""
        owner = validate.identifier('owner', owner)
        tenant = validate.optional_identifier('tenant', tenant)
        token = validate.identifier('reservation token', token)
        k, s = self.keys, self.settings

        def parse(reply: list[Any]) -> Reservation:
            if as_int(reply[0]) == 1:
                return Reservation(token, owner, tenant, as_int(reply[1]))
            if reply[1] == 'uninitialised':
                raise PoolUninitialised(f'pool {k.prefix} has no generation marker')
            if reply[1] == 'unverified':
                raise PoolUnverified(f'Redis restarted or failed over since pool {k.prefix} was verified')
            if reply[1] == 'tenants_unknown':
                raise PoolRecovering(
                    f'the tenant index was lost, so tenant {tenant!r} cannot be counted against its cap until the '
                    'expiry sweep rebuilds it',
                    s.expired_interval_s,
                )
            scope, live, reserved, cap = reply[1], as_int(reply[2]), as_int(reply[3]), as_int(reply[4])
            raise CapacityExceeded(live, reserved, cap, tenant if scope == 'tenant' else None)

        lease_ms = now_ms + s.reservation_lease_s * 1000
        return Call(
            parse,
            'reserve_slot',
            (k.slots, k.tenants, k.reservations, k.live, k.generation, k.verified),
            (member(token, owner, tenant), tenant or '', s.max_sessions, s.tenant_cap(tenant) or 0, now_ms, lease_ms,
             PURGE_LIMIT),
        )  # fmt: skip

    def pool_state(self) -> Call[PoolState]:
        """Whether the pool can admit (see pool_state.lua)."""
        k = self.keys
        return Call(lambda r: PoolState(as_int(r[0]) == 1, as_int(r[1]) == 1, str(r[2])), 'pool_state',
                    (k.generation, k.verified))  # fmt: skip

    def mark_verified(self, generation: str, replication_id: str) -> Call[bool]:
        """The pool is initialised or verified on the server of `replication_id`; False if the server is no
        longer that one (it restarted or failed over meanwhile)."""
        k = self.keys
        return Call(lambda reply: as_int(reply) == 1, 'mark_verified', (k.generation, k.verified),
                    (generation, replication_id))  # fmt: skip

    def release(self, reservation: Reservation, failed: bool = False) -> Call[bool]:
        """Give a reservation's slot back; False if it was already gone (expired or released). `failed`: its
        sandbox failed to start, counted (`failed_start`) once."""
        k = self.keys
        return Call(
            lambda reply: as_int(reply) == 1,
            'release_slot',
            (k.reservations, k.slots, k.tenants, k.live, k.counters),
            (reservation_member(reservation), int(failed)),
        )

    def activate(
        self,
        reservation: Reservation,
        session_id: str,
        ttl_seconds: int | None,
        profile: str | None,
        now_ms: int,
        *,
        turn_seq: int = 0,
        created_ms: int | None = None,
    ) -> Call[SessionInfo]:
        """Turn a reservation into a live session with a hard deadline `ttl_seconds` from now.

        A restored session passes the turn sequence and creation time it had: its sequence never goes back.
        """
        session_id = validate.identifier('session_id', session_id)
        profile = validate.optional_identifier('profile', profile)
        reserved = reservation_member(reservation)
        token = reservation.token
        limits = self.settings.limits(profile)
        ttl_s = limits.default_ttl_s if ttl_seconds is None else check_ttl(ttl_seconds, limits.max_ttl_s)
        k = self.keys

        def parse(reply: list[Any]) -> SessionInfo:
            code = as_int(reply[0])
            if code == -1:
                raise ReservationLost(f'reservation {token} expired or was released; reserve again')
            if code == -2:
                raise SessionExists(f'session {session_id!r} is already live; release reservation {token}')
            if code == -3:
                raise SessionReaping(f'the worktree of session {session_id!r} is being cleaned; retry shortly')
            return self._info(session_id, reply[1], reply[2], reply[3], busy=False, reaping=False)

        return Call(
            parse,
            'activate_session',
            (
                k.reservations,
                k.live,
                k.deadline,
                k.meta_of(session_id),
                k.slots,
                k.tenants,
                k.cleaning,
                k.reaping,
                k.unsaved,
                k.closed,
                k.epoch,
            ),
            (
                reserved,
                session_id,
                profile or '',
                now_ms,
                now_ms + ttl_s * 1000,
                turn_seq,
                now_ms if created_ms is None else created_ms,
                f'activate@{reservation.owner}' if self._sourced else '',
            ),
        )

    def touch(self, session_ids: Sequence[str], now_ms: int, tenure: int | None = None) -> Call[int]:
        """Stamp genuine activity on the live ones of `session_ids`; one raw ZADD.

        Returns how many sessions' activity moved forward. `XX` never adds a session that is not
        live; `GT` never moves activity back (a replica a few ms behind cannot undo a newer stamp).
        With a `tenure` (of a replica's copy of the session), a stale one is refused: Fenced.
        """
        ids = validate.identifiers('session_id', session_ids)
        if not ids:
            return NOTHING_STAMPED
        if tenure is not None or self._touch_source:
            return self._scripted([(session_id, now_ms, tenure) for session_id in ids], refuse=True)
        members: list[Arg] = [now_ms] * (2 * len(ids))
        members[1::2] = ids  # laid out by slicing: this is touch_many's hot path
        return Call(as_int, command=('ZADD', self.keys.live, 'XX', 'GT', 'CH', *members))

    def stamp(self, stamps: Sequence[tuple[str, int, int | None]]) -> Call[int]:
        """Stamp each of `stamps` (session_id, at_ms, tenure or None; validated by the caller) at its own time: a
        coalesced batch of touches, one raw ZADD XX GT like `touch` (a stale tenure's stamp is dropped)."""
        if not stamps:
            return NOTHING_STAMPED
        if self._touch_source or any(tenure is not None for _, _, tenure in stamps):
            return self._scripted(stamps, refuse=False)
        members = [part for session_id, at_ms, _ in stamps for part in (at_ms, session_id)]
        return Call(as_int, command=('ZADD', self.keys.live, 'XX', 'GT', 'CH', *members))

    def _scripted(self, stamps: Sequence[tuple[str, int, int | None]], *, refuse: bool) -> Call[int]:
        """The stamps through touch_sessions.lua, which judges their tenures and records the trail's sources;
        a stale tenure's stamp is refused (Fenced, if `refuse`: touch's one session)."""

        def parse(reply: list[Any]) -> int:
            moved, refused = as_int(reply[0]), as_int(reply[1])
            if refused and refuse:
                raise stale(stamps[0][0], stamps[0][2], 'its activity was not stamped')
            if refused:
                log.info('%d activity stamps of stale copies of sessions refused', refused)
            return moved

        args: list[Arg] = [self._touch_source]
        for session_id, at_ms, tenure in stamps:
            args += [at_ms, session_id, tenure_arg(tenure)]
        buckets = (self.keys.meta_of(session_id) for session_id, _, _ in stamps)
        return Call(parse, 'touch_sessions', (self.keys.live, *buckets), tuple(args))

    @cached_property
    def _sourced(self) -> bool:
        """Whether stamps record their source in the trail."""
        return bool(self.settings.trail_length and self.settings.trail_sources)

    @property
    def _trail_flag(self) -> str:
        """A turn script's argument: '1' when turns are recorded as the trail's source."""
        return '1' if self._sourced else '0'

    @cached_property
    def _touch_source(self) -> str:
        """'touch@<replica_id>' when touches are recorded in the trail, else ''."""
        s = self.settings
        return f'touch@{s.replica_id or "?"}' if self._sourced else ''

    def begin_turn(
        self, session_id: str, token: str, now_ms: int, tenure: int | None = None
    ) -> Call[tuple[int, int | None]]:
        """Mark the session busy for one turn; returns its turn_seq before this turn, and the tenure it began under
        (its end and its lease's renewals are of that life only)."""
        session_id = validate.identifier('session_id', session_id)
        k = self.keys

        def parse(reply: list[Any]) -> tuple[int, int | None]:
            code = as_int(reply[0])
            if code == -2:
                raise SessionReaping(f'session {session_id!r} is being evicted; retry, then restore it')
            if code == -3:
                raise SessionNotLive(f'session {session_id!r} is past its hard deadline')
            if code == -1:
                raise SessionNotLive(f'session {session_id!r} is not live')
            if code == -4:
                raise SessionDamaged(f'session {session_id!r} has lost its record in Redis; nothing was changed')
            if code == -7:
                raise stale(session_id, tenure, 'no turn began')
            return as_int(reply[1]), (as_int(reply[2]) if len(reply) > 2 and reply[2] else None)

        lease_ms = now_ms + self.settings.busy_lease_s * 1000
        return Call(
            parse,
            'begin_turn',
            (k.live, k.deadline, k.reaping, k.busy, k.turns, k.meta_of(session_id)),
            (session_id, token, now_ms, lease_ms, self._trail_flag, tenure_arg(tenure)),
        )

    def renew_turn(self, session_id: str, token: str, now_ms: int, tenure: int | None = None) -> Call[int]:
        """Extend one turn's busy lease: 1 renewed, 2 renewed after a lapse, 0 no longer live (or restored since
        the turn began under `tenure`)."""
        k = self.keys
        lease_ms = now_ms + self.settings.busy_lease_s * 1000
        return Call(as_int, 'renew_turn', (k.live, k.busy, k.turns, k.reaping, k.meta_of(session_id)),
                    (session_id, token, now_ms, lease_ms, tenure_arg(tenure)))  # fmt: skip

    def end_turn(self, session_id: str, token: str, now_ms: int, tenure: int | None = None) -> Call[int | None]:
        """Finish one turn; returns the new turn_seq, or None if the session left the pool meanwhile (or was
        restored since the turn began under `tenure`: the new life's sequence is not touched)."""
        k = self.keys
        return Call(
            lambda reply: as_int(reply[1]) if as_int(reply[0]) == 1 else None,
            'end_turn',
            (k.live, k.busy, k.turns, k.meta_of(session_id), k.unsaved),
            (session_id, token, now_ms, self._trail_flag, tenure_arg(tenure)),
        )

    def extend(self, session_id: str, ttl_seconds: int, now_ms: int, tenure: int | None = None) -> Call[SessionInfo]:
        """Move the session's hard deadline to `ttl_seconds` from now, never back and never past its profile's
        `max_ttl_s` from creation (the deadline returned says where it is)."""
        session_id = validate.identifier('session_id', session_id)
        ttl_s = check_ttl(ttl_seconds, HARD_MAX_TTL_S)
        s = self.settings

        def parse(reply: list[Any]) -> SessionInfo:
            code = as_int(reply[0])
            if code == -2:
                raise SessionReaping(f'session {session_id!r} is being evicted; its deadline was not moved')
            if code == -3:
                raise SessionNotLive(f'session {session_id!r} is past its hard deadline')
            if code == -1:
                raise SessionNotLive(f'session {session_id!r} is not live')
            if code == -4:
                raise SessionDamaged(f'session {session_id!r} has lost its record or deadline in Redis; not extended')
            if code == -7:
                raise stale(session_id, tenure, 'its deadline was not moved')
            info = self._info(session_id, reply[1], reply[2], reply[3], busy=as_int(reply[4]) > now_ms, reaping=False)
            return replace(info, pinned=as_int(reply[5]) == 1)

        profiles = [part for name in s.profiles for part in (name, s.limits(name).max_ttl_s * 1000)]
        k = self.keys
        return Call(parse, 'extend_session', (k.live, k.deadline, k.reaping, k.meta_of(session_id), k.busy, k.pinned),
                    (session_id, now_ms, ttl_s * 1000, s.max_ttl_s * 1000, tenure_arg(tenure), *profiles))  # fmt: skip

    def pin(self, session_id: str, now_ms: int, tenure: int | None = None) -> Call[bool]:
        """Keep the session from idle, LRU and make-room eviction; True if it was not pinned yet."""
        session_id = validate.identifier('session_id', session_id)
        s, k = self.settings, self.keys

        def parse(reply: list[Any]) -> bool:
            code = as_int(reply[0])
            if code == -5:
                raise PinLimitReached(as_int(reply[1]), as_int(reply[2]))
            if code == -6:
                raise PinLimitReached(as_int(reply[1]), as_int(reply[2]), str(reply[3]))
            if code == -2:
                raise SessionReaping(f'session {session_id!r} is being evicted; it was not pinned')
            if code == -3:
                raise SessionNotLive(f'session {session_id!r} is past its hard deadline; it was not pinned')
            if code == -1:
                raise SessionNotLive(f'session {session_id!r} is not live; nothing was pinned')
            if code == -4:
                raise SessionDamaged(f'session {session_id!r} has lost its record in Redis; not pinned')
            if code == -7:
                raise stale(session_id, tenure, 'it was not pinned')
            return code == 1

        keys = (k.live, k.reaping, k.meta_of(session_id), k.pinned, k.pinned_tenants, k.deadline)
        return Call(parse, 'pin_session', keys,
                    (session_id, now_ms, s.pin_limit, s.max_pinned_per_tenant or 0, tenure_arg(tenure)))  # fmt: skip

    def unpin(self, session_id: str, tenure: int | None = None) -> Call[bool]:
        """Let idle and LRU eviction take the session again; True if it was pinned."""
        session_id = validate.identifier('session_id', session_id)
        k = self.keys

        def parse(reply: Any) -> bool:
            if as_int(reply) == -7:
                raise stale(session_id, tenure, 'it was not unpinned')
            return as_int(reply) == 1

        return Call(parse, 'unpin_session', (k.meta_of(session_id), k.pinned, k.pinned_tenants),
                    (session_id, tenure_arg(tenure)))  # fmt: skip

    def close(self, session_id: str, now_ms: int, tenure: int | None = None) -> Call[Closed | None]:
        """End a live session and give its slot back; returns it as it was (with the fencing token of its durable
        record), or None if it was not live."""
        session_id = validate.identifier('session_id', session_id)
        k = self.keys

        def parse(reply: list[Any]) -> Closed | None:
            code = as_int(reply[0])
            if code == -2:
                raise SessionReaping(f'session {session_id!r} is being evicted; it will be resumable')
            if code == -4:
                raise SessionDamaged(f'session {session_id!r} has lost its record or deadline in Redis; not closed')
            if code == -7:
                raise stale(session_id, tenure, 'it was not closed')
            if code != 1:
                return None
            info = self._info(session_id, reply[1], reply[2], reply[3], busy=False, reaping=False)
            return Closed(replace(info, state=SessionState.CLOSED), as_int(reply[4]))

        return Call(
            parse,
            'close_session',
            (k.live, k.deadline, k.busy, k.turns, k.meta_of(session_id), k.reaping, k.slots, k.tenants,
             k.reservations, k.epoch, k.closed),
            (session_id, now_ms, tenure_arg(tenure)),
        )  # fmt: skip

    def status(self, session_id: str, now_ms: int) -> Call[SessionInfo | None]:
        """Read one session without counting as activity; None if Redis does not hold it."""
        session_id = validate.identifier('session_id', session_id)
        k = self.keys

        def parse(reply: list[Any]) -> SessionInfo | None:
            record, last_active, expires_at, busy_lease, reaping, pinned = reply
            if last_active is None:
                return None  # not in the live pool (a record left without its live entry is reconcile's to relink)
            if record is None or expires_at is None:
                missing = 'record' if record is None else 'deadline'
                raise SessionDamaged(f'session {session_id!r} is live but its {missing} is missing in Redis')
            busy = busy_lease is not None and as_int(busy_lease) > now_ms
            info = self._info(session_id, record, last_active, expires_at, busy=busy, reaping=reaping is not None)
            return replace(info, pinned=True) if pinned is not None else info

        keys = (k.live, k.deadline, k.busy, k.meta_of(session_id), k.reaping, k.pinned)
        return Call(parse, 'read_session', keys, (session_id,))

    def stats(self, now_ms: int) -> Call[PoolStats]:
        """Pool figures in one atomic read."""
        k = self.keys
        cap = self.settings.max_sessions
        return Call(
            lambda r: PoolStats(as_int(r[0]), as_int(r[1]), as_int(r[2]), as_int(r[3]), cap, as_int(r[4])),
            'read_stats',
            (k.live, k.reservations, k.busy, k.reaping, k.slots),
            (now_ms,),
        )

    def retry_after(self, now_ms: int) -> Call[int]:
        """Whole seconds until a slot will likely come back by itself (a reservation lease running out, the
        least recently active session idling out and swept): a Retry-After for a refused reservation."""
        s = self.settings
        idle_ms = (min(s.idle_ttls_s) + s.idle_interval_s) * 1000

        def parse(reply: list[Any]) -> int:
            lease, oldest = reply
            moments = [as_int(lease)] if lease else []
            if oldest:
                # Overdue (busy, waiting for a checkpoint, persistence off): no sooner than the next idle sweep.
                moments.append(max(as_int(oldest) + idle_ms, now_ms + s.idle_interval_s * 1000))
            wait_ms = min(moments, default=now_ms + idle_ms) - now_ms
            return max(1, -(-wait_ms // 1000))

        return Call(parse, 'read_next_free', (self.keys.reservations, self.keys.live), ())

    def next_token(self) -> Call[int]:
        """A fresh fencing token, for a client-side MongoDB write."""
        return next_token(self.keys.epoch)

    def live_below(self, last_active_ms: int, limit: int) -> Call[list[tuple[str, int]]]:
        """The least recently active live sessions with activity at or before `last_active_ms`."""
        return Call(
            scored,
            command=('ZRANGEBYSCORE', self.keys.live, '-inf', last_active_ms, 'WITHSCORES', 'LIMIT', 0, limit),
        )

    def read_notices(
        self, owner: str, after: str, count: int, block_ms: int | None
    ) -> Call[tuple[list[Notice], str | None]]:
        """Notices in `owner`'s inbox after stream id `after`, waiting up to `block_ms` for the first; and where
        the next read starts (the last entry read, readable or not; None when nothing arrived)."""
        owner = validate.identifier('owner', owner)
        after = validate.stream_id('after', after)
        block: tuple[Arg, ...] = ('BLOCK', block_ms) if block_ms is not None else ()
        return Call(
            _parse_notices,
            command=('XREAD', 'COUNT', count, *block, 'STREAMS', self.keys.inbox(owner), after),
        )

    def last_notice_id(self, owner: str) -> Call[str]:
        """The id of the newest notice in `owner`'s inbox ('0' when empty): where a consumer starting now begins."""
        owner = validate.identifier('owner', owner)
        return Call(
            lambda reply: str(reply[0][0]) if reply else '0',
            command=('XREVRANGE', self.keys.inbox(owner), '+', '-', 'COUNT', 1),
        )

    def heartbeat(self, owner: str, now_ms: int) -> Call[None]:
        """Announce that replica `owner` is alive for another `replica_ttl_s`."""
        owner = validate.identifier('owner', owner)
        expiry_ms = now_ms + self.settings.replica_ttl_s * 1000
        return Call(lambda reply: None, command=('ZADD', self.keys.replicas, 'GT', expiry_ms, owner))

    @staticmethod
    def _info(
        session_id: str, record: str, last_active: Any, expires_at: Any, *, busy: bool, reaping: bool
    ) -> SessionInfo:
        meta = Meta.unpack(record)
        return SessionInfo(
            session_id=session_id,
            state=SessionState.REAPING if reaping else SessionState.LIVE,
            owner=meta.owner,
            tenant=meta.tenant,
            profile=meta.profile,
            created_at_ms=meta.created_ms,
            last_active_ms=as_int(last_active),
            expires_at_ms=as_int(expires_at),
            busy=busy,
            turn_seq=meta.turn_seq,
            tenure=meta.tenure,
        )
