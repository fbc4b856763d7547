"""What the web tier does, each operation written once as steps that the sync and the async client drive.

A flow yields `Call`s (Redis), `NOW` (lifecycle time) and `Durable` steps (the store, the app's callbacks)
and gets each one's result back, or its error thrown in (see `pool.calls`). `Lifecycle` runs a flow
with `Executor.do`, `AsyncLifecycle` with `AsyncExecutor.do`: the rules live here, once.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from lifecycle import validate
from lifecycle.clock import Clock
from lifecycle.errors import (
    CapacityExceeded,
    ConfigurationError,
    Fenced,
    InvalidArgument,
    LifecycleError,
    PersistenceError,
    PoolRecovering,
    PoolUninitialised,
    SessionDamaged,
    SessionExists,
    SessionNotLive,
    SessionReaping,
)
from lifecycle.jobs import worktrees
from lifecycle.models import (
    SANDBOX_RESET_NOTE,
    Notice,
    NoticeKind,
    Reservation,
    Restored,
    SessionInfo,
    SessionState,
    interrupted_note,
    to_epoch_ms,
)
from lifecycle.pool import calls
from lifecycle.pool.calls import NOW, Call, Durable, Steps
from lifecycle.pool.claims import ClaimIndex
from lifecycle.pool.keys import Keys
from lifecycle.pool.sessions import Closed, PoolState, SessionIndex, stale
from lifecycle.pool.trail import Trail, TrailIndex, trail_of_document
from lifecycle.sandboxes import SandboxDriver, driver_from_settings
from lifecycle.sandboxes.base import extend_sandbox
from lifecycle.settings import Settings
from lifecycle.stores import SnapshotStore, store_from_settings
from lifecycle.stores.documents import checked_messages, checked_snapshot, info_from_document, interrupted_of, record_of

log = logging.getLogger(__name__)
T = TypeVar('T')
MAKE_ROOM_ATTEMPTS = 3  # other replicas may take the freed slot first
RETRY_SOON_S = 1  # a pool that failed over while being verified: the next try verifies it again
NOTICE_BATCH = 100
SERVE_WAIT_MS = 1000  # serve_notices' blocking read: how soon stop() is noticed


@dataclass
class Turn:
    """One turn in flight: `seq` is the turn sequence it started from; `lease_lapsed` is set if a
    heartbeat found the busy lease gone (Redis unreachable for most of a lease), so the app knows the
    session was briefly unprotected."""

    session_id: str
    seq: int
    finished_seq: int | None = None
    lease_lapsed: bool = False
    tenure: int | None = None  # the life it began in: its renewals and its end touch no later one


@dataclass(frozen=True)
class Resumable:
    """What restore() needs of a resumable session's document, checked."""

    tenant: str | None
    profile: str | None
    expires_at_ms: int
    created_ms: int | None
    # The turn sequence a restored session goes on from: the highest MongoDB knows of, so no checkpoint
    # taken before the restore can cover a turn finished after it.
    turn_seq: int


def resumable_of(document: Mapping[str, Any]) -> Resumable:
    """The document's fields restore() acts on; SessionDamaged, naming the field, if one is unusable."""
    session_id = document.get('_id')
    try:
        expires_at, created = document['expires_at'], document.get('created_at')
        return Resumable(
            tenant=validate.optional_identifier('tenant', document.get('tenant')),
            profile=validate.optional_identifier('profile', document.get('profile')),
            expires_at_ms=to_epoch_ms(expires_at),
            created_ms=to_epoch_ms(created) if created is not None else None,
            turn_seq=max(int(document.get('turn_seq', 0)), int(document.get('checkpoint_seq', 0))),
        )
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise SessionDamaged(f'the MongoDB document of session {session_id!r} is unusable: {exc!r}') from exc


def refusal_counter(full: CapacityExceeded) -> str:
    """The shared counter a refusal adds to: 'refused:pool' or 'refused:tenant'."""
    return 'refused:tenant' if full.tenant else 'refused:pool'


def checkpoint_args(
    session_id: str, saved: object
) -> tuple[Mapping[str, Any], Sequence[Mapping[str, Any]] | None] | None:
    """What an app's snapshot function returned, as checkpoint() arguments: None (nothing to save), a
    snapshot mapping, or (snapshot, messages)."""
    if saved is None:
        return None
    if isinstance(saved, tuple) and len(saved) == 2:
        return saved[0], saved[1]
    if isinstance(saved, Mapping):
        return saved, None
    raise InvalidArgument(f'the snapshot function returned {saved!r:.80} for {session_id!r}: want a mapping, '
                          '(mapping, messages) or None')  # fmt: skip


def new_token() -> str:
    """A fresh reservation or turn token."""
    return secrets.token_hex(12)


def require(store: SnapshotStore | None, what: str) -> SnapshotStore:
    if store is None:
        raise ConfigurationError(f'{what} needs MongoDB: set LIFECYCLE_MONGO_URL')
    return store


class Wiring:
    """What both clients hold beside their executor: settings, the index and the flows over it, and the store
    and sandbox driver (built from settings on first use, unless injected)."""

    asynchronous = False  # the async client's own store is the AsyncMongoClient one

    def __init__(
        self, settings: Settings, keys: Keys, clock: Clock, store: SnapshotStore | None, driver: SandboxDriver | None
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.index = SessionIndex(settings, keys)
        self.flows = Flows(settings, self.index)
        self._store = store
        self._owns_store = store is None
        self._driver = driver
        self._owns_driver = driver is None
        self._driver_clocked = False

    @property
    def store(self) -> SnapshotStore | None:
        """The MongoDB store when `mongo_url` is set (connected on first use), else None."""
        if self._store is None:
            self._store = store_from_settings(self.settings, asynchronous=self.asynchronous)
        return self._store

    @property
    def driver(self) -> SandboxDriver:
        """The sandbox driver `settings.sandbox_driver` names (or the one injected); a driver that dates its
        sandboxes (the docker driver) does so by this client's lifecycle time unless given a clock of its own."""
        if self._driver is None:
            docker = self.settings.sandbox_driver == 'docker'
            self._driver = driver_from_settings(self.settings, self._driver_clock() if docker else None)
        elif not self._driver_clocked:
            adopt = getattr(self._driver, 'adopt_clock', None)
            if adopt is not None:
                adopt(self._driver_clock())
        self._driver_clocked = True
        return self._driver

    def _driver_clock(self) -> Clock:
        """Lifecycle time for the driver's deadlines: a clock that reads Redis `TIME` itself when it must."""
        return self.clock

    def _close_driver(self) -> None:
        """Close the sandbox driver's connections (the docker driver's) if this client built it."""
        close = getattr(self._driver, 'close', None)
        if self._owns_driver and close is not None:
            close()

    def _close_store(self) -> object:
        """Close the MongoDB client if this client opened it; returns what close() returned (a coroutine for
        an async store: await it)."""
        if not self._owns_store or self._store is None:
            return None
        store: Any = self._store  # sync or async: its close() returns None or a coroutine
        self._store = None
        return store.close()


class Flows:
    """The web tier's operations over one pool index and (optional) store, as steps."""

    def __init__(self, settings: Settings, index: SessionIndex) -> None:
        self.settings = settings
        self.index = index
        self.keys = index.keys

    def reserve(
        self,
        owner: str,
        tenant: str | None,
        token: str,
        make_room: Callable[[], bool] | None,
        store: SnapshotStore | None,
    ) -> Steps[Reservation]:
        """Hold a slot; with `make_room`, a full pool first evicts one idle session (up to 3 tries). The first
        reservation of a pool initialises it (see `initialise`)."""
        for attempt in range(MAKE_ROOM_ATTEMPTS + 1):
            try:
                try:
                    reservation: Reservation = yield self.index.reserve(owner, tenant, token, (yield NOW))
                except PoolUninitialised:
                    yield from self.initialise(store)
                    try:
                        reservation = yield self.index.reserve(owner, tenant, token, (yield NOW))
                    except PoolUninitialised as again:  # lost or failed over again, right after
                        raise PoolRecovering(str(again), RETRY_SOON_S) from again
                return reservation
            except CapacityExceeded as full:
                last = attempt == MAKE_ROOM_ATTEMPTS
                if last or make_room is None or full.tenant is not None or not (yield Durable(make_room)):
                    if not last:  # the last try follows a room made: not a refusal of the app's request
                        try:
                            yield calls.increment(self.keys.counters, refusal_counter(full))
                        except LifecycleError:
                            log.debug('refusal not counted', exc_info=True)
                    raise
        raise AssertionError('unreachable')  # pragma: no cover

    def initialise(self, store: SnapshotStore | None) -> Steps[None]:
        """A pool that cannot admit yet: new (no generation marker), its Redis lost its state, or Redis restarted
        or failed over since the pool was verified (a new replication history: writes the old one took may be
        missing). With MongoDB, the pool's generation is recorded there the first time; if MongoDB already had
        one and still knows live sessions, they may be missing here: admission fails closed (PoolRecovering)
        until the expiry sweep has rebuilt or verified the pool. Otherwise nothing can be missing, and the pool
        is marked verified on this server."""
        state: PoolState = yield self.index.pool_state()
        if state.ready:
            return  # another replica got there first
        proposed = new_token()
        generation = proposed
        if store is not None:
            generation = yield Durable(store.claim_generation, (self.keys.prefix, proposed))
            # MongoDB, then the state again: a session activated meanwhile by another replica (which readied the
            # pool before it could reserve) is then seen with the pool ready, never taken for a lost one.
            knows_live = generation != proposed and (yield Durable(store.live_documents, (self.keys.prefix, '', 1)))
            # And a server that kept sessions (a restart, a failover) may hold some whose close it lost: only the
            # rebuild ends those again, even once MongoDB knows no session live.
            held = state.initialised and (yield calls.cardinality(self.keys.live)) > 0
            if (knows_live or held) and not (yield self.index.pool_state()).ready:
                raise self._recovering(state, generation)
            if generation != proposed:  # tokens the lost writes issued may be in MongoDB's fences: start above them
                highest = yield Durable(store.highest_fence)
                yield ClaimIndex(self.settings, self.keys).raise_epoch(max(highest, (yield NOW)) + 1)
        # Only on the server whose state was read: one that restarted or failed over since is verified again.
        if not (yield self.index.mark_verified(generation, state.replication_id)):
            raise PoolRecovering(f'Redis failed over while pool {self.keys.prefix} was being initialised',
                                 RETRY_SOON_S)  # fmt: skip

    def _recovering(self, state: PoolState, generation: str) -> PoolRecovering:
        what = ('lost the state of' if not state.initialised
                else 'restarted or failed over (a new replication history) since it verified')  # fmt: skip
        return PoolRecovering(
            f'Redis {what} pool {self.keys.prefix} (generation {generation}) while sessions may be missing or '
            'stale: admission resumes once the expiry sweep has rebuilt it',
            self.settings.expired_interval_s,
        )

    def lost(self, store: SnapshotStore | None) -> Steps[bool]:
        """Whether sessions may be missing from Redis: it lost the pool's state (no generation marker while
        MongoDB recorded one; without MongoDB nothing can tell a lost pool from a new one), or it restarted or
        failed over since the pool was verified. Asked only on a failure path, to say so."""
        if store is None:
            return False
        state: PoolState = yield self.index.pool_state()
        if state.ready:
            return False
        return (yield Durable(store.generation_of, (self.keys.prefix,))) is not None

    def announce(self, owner: str, store: SnapshotStore | None) -> Steps[None]:
        """Record durably that replica `owner` heartbeats (best effort): after a rebuild, its sessions are vouched
        for only while it goes on heartbeating, so a replica that died while Redis was lost has its sessions
        recovered as owner-lost instead of lingering until they idle out."""
        if store is None:
            return
        try:
            yield Durable(store.announce_owner, (self.keys.prefix, validate.identifier('owner', owner)))
        except PersistenceError as exc:
            log.warning('replica %s not recorded as heartbeating: %s', owner, exc)

    def _missing(self, what: str) -> PoolRecovering:
        return PoolRecovering(
            f'{what} unknown: Redis lost the state of pool {self.keys.prefix} or failed over, and the expiry sweep '
            'has not rebuilt it yet',
            self.settings.expired_interval_s,
        )

    def _owned(self, call: Call[T], session_id: str, store: SnapshotStore | None) -> Steps[T]:
        """`call`, a write made with a tenure. Its refusal (Fenced) while the pool is not verified may be Redis's:
        a restart or failover that lost an eviction and a restore brings back an earlier life, which the rebuild
        replaces with the one MongoDB holds. Then it is PoolRecovering: retry once the pool is rebuilt."""
        try:
            done: T = yield call
        except Fenced:
            if (yield from self.lost(store)):
                raise self._unsure(session_id) from None
            raise
        return done

    def _unsure(self, session_id: str) -> PoolRecovering:
        return PoolRecovering(
            f'session {session_id!r} may be held in an earlier life (or behind its turns): Redis restarted or failed '
            f'over, and the expiry sweep has not rebuilt pool {self.keys.prefix} from MongoDB yet',
            self.settings.expired_interval_s,
        )

    def activate(
        self,
        reservation: Reservation,
        session_id: str,
        ttl_seconds: int | None,
        profile: str | None,
        store: SnapshotStore | None,
    ) -> Steps[SessionInfo]:
        """Activate in Redis; with MongoDB, then record the activation durably (what a pool that lost its Redis
        is rebuilt from). If that record cannot be written, the activation is undone and the slot given back."""
        info: SessionInfo = yield self.index.activate(reservation, session_id, ttl_seconds, profile, (yield NOW))
        if store is not None and info.tenure is not None:  # drawn by the activation, in its record
            try:
                yield Durable(store.activated, (record_of(info), info.tenure, self.keys.prefix))
            except LifecycleError:
                yield from self._undo(session_id, info.tenure)
                raise
        return info

    def _undo(self, session_id: str, tenure: int | None) -> Steps[None]:
        """Undo an activation in Redis whose durable record was not written: close it, but only the life it began
        (a replica paused before that write may find the session evicted and restored by another since)."""
        try:
            yield self.index.close(session_id, (yield NOW), tenure)
        except Fenced:
            log.warning('session %s was not closed: it was restored elsewhere (tenure %s is stale)', session_id, tenure)

    def touch(self, session_ids: Sequence[str], store: SnapshotStore | None, tenure: int | None = None) -> Steps[int]:
        touch = self.index.touch(session_ids, (yield NOW), tenure)
        stamped: int = yield from self._owned(touch, session_ids[0] if session_ids else '', store)
        if stamped == len(session_ids):
            return stamped
        # ZADD's CH counts only stamps that moved: a session stamped in this millisecond already is live all the
        # same (and the pool's state is asked only for sessions that really are missing).
        held: list[int | None] = yield calls.scores(self.keys.live, list(session_ids))
        live = sum(score is not None for score in held)
        if live < len(session_ids) and (yield from self.lost(store)):
            raise self._missing(f'session {session_ids[0]!r} is' if len(session_ids) == 1 else 'sessions are')
        return live

    def begin_turn(
        self, session_id: str, token: str, store: SnapshotStore | None, tenure: int | None = None
    ) -> Steps[Turn]:
        try:
            seq, began = yield from self._owned(self.index.begin_turn(session_id, token, (yield NOW), tenure),
                                                session_id, store)  # fmt: skip
            return Turn(session_id, seq, tenure=began)
        except SessionNotLive:
            if (yield from self.lost(store)):
                raise self._missing(f'session {session_id!r} is') from None
            raise

    def renew_turn(self, turn: Turn, token: str) -> Steps[None]:
        if (yield self.index.renew_turn(turn.session_id, token, (yield NOW), turn.tenure)) != 1:
            turn.lease_lapsed = True
            log.warning('turn on %s: busy lease had lapsed or the session left the pool', turn.session_id)

    def end_turn(self, turn: Turn, token: str) -> Steps[int | None]:
        finished: int | None = yield self.index.end_turn(turn.session_id, token, (yield NOW), turn.tenure)
        return finished

    def close(self, session_id: str, store: SnapshotStore | None, tenure: int | None = None) -> Steps[bool]:
        """End a live session; with a store, mark its document closed (best effort)."""
        closed: Closed | None = yield from self._owned(self.index.close(session_id, (yield NOW), tenure), session_id,
                                                       store)  # fmt: skip
        if closed is None:
            if (yield from self.lost(store)):
                raise self._missing(f'session {session_id!r} is')
            return False
        if store is not None:
            try:  # its token came with the close, from the state that held it: above every fence MongoDB holds
                record = record_of(closed.info)
                ended = yield Durable(store.end, (record, SessionState.CLOSED, closed.token,
                                                  self.settings.mongo_timeout_ms))  # fmt: skip
            except PersistenceError as exc:
                log.warning('closed %s, but MongoDB did not record it: %s', session_id, exc)
            else:
                if not ended:  # Redis held an earlier life (it lost an eviction and a restore): not this one's close
                    yield calls.remove(self.keys.closed, [session_id])  # so the rebuild gives the later one back
                    if (yield from self.lost(store)):  # perhaps the later life is this caller's: it retries after
                        raise self._unsure(session_id)
                    raise stale(session_id, closed.info.tenure, 'only a stale copy of it in Redis was closed; MongoDB '
                                'holds its later life, which the pool takes back when it is rebuilt')  # fmt: skip
        return True

    def pin(self, session_id: str, store: SnapshotStore | None, tenure: int | None = None) -> Steps[bool]:
        try:
            pinned: bool = yield from self._owned(self.index.pin(session_id, (yield NOW), tenure), session_id, store)
        except SessionNotLive:
            if (yield from self.lost(store)):
                raise self._missing(f'session {session_id!r} is') from None
            raise
        return pinned

    def unpin(self, session_id: str, store: SnapshotStore | None, tenure: int | None = None) -> Steps[bool]:
        unpinned: bool = yield from self._owned(self.index.unpin(session_id, tenure), session_id, store)
        return unpinned

    def extend(
        self,
        session_id: str,
        ttl_seconds: int,
        store: SnapshotStore | None,
        driver: SandboxDriver,
        tenure: int | None = None,
    ) -> Steps[SessionInfo]:
        """Move the hard deadline in Redis (atomically with the deadline index), then in MongoDB (what a restore
        and a rebuilt pool read), then tell the sandbox driver, where it can move its sandbox's own deadline."""
        info: SessionInfo = yield from self._owned(self.index.extend(session_id, ttl_seconds, (yield NOW), tenure),
                                                   session_id, store)  # fmt: skip
        if store is not None:
            try:
                yield Durable(store.extend, (info.session_id, info.created_at, info.expires_at))
            except PersistenceError as exc:
                raise PersistenceError(
                    f'session {info.session_id!r} runs until {info.expires_at.isoformat()} now, '
                    f'but MongoDB did not record it (retry extend: it converges): {exc}'
                ) from exc
        yield Durable(extend_sandbox, (driver, info.session_id, info.expires_at_ms))
        return info

    def status(self, session_id: str, store: SnapshotStore | None) -> Steps[SessionInfo | None]:
        info: SessionInfo | None = yield self.index.status(session_id, (yield NOW))
        if info is not None or store is None:
            return info
        return info_from_document((yield Durable(store.load, (session_id,))))

    def trail(self, session_id: str, store: SnapshotStore | None) -> Steps[Trail | None]:
        """A live session's trail from Redis; one no longer live, the trail its eviction or expiry recorded."""
        info: SessionInfo | None = yield self.index.status(session_id, (yield NOW))
        if info is not None:
            found: Trail | None = yield TrailIndex(self.keys, self.settings.trail_length).read(session_id)
            return found or Trail('', ())
        if store is None:
            return None
        document = yield Durable(store.load, (session_id,))
        return trail_of_document(document.get('trail')) if document is not None else None

    def register_worktree(self, session_id: str, path: object) -> Steps[str]:
        normal, session_id = worktrees.registration(session_id, path, self.settings.worktree_root)  # type: ignore[arg-type]
        yield calls.hash_set(self.keys.worktrees, {normal: session_id})
        return normal

    def checkpoint(
        self,
        session_id: str,
        snapshot: Mapping[str, Any],
        messages: Sequence[Mapping[str, Any]] | None,
        store: SnapshotStore | None,
        tenure: int | None = None,
    ) -> Steps[int]:
        """See `Lifecycle.checkpoint`."""
        store = require(store, 'checkpoint()')
        tenure = validate.optional_token('tenure', tenure)
        info: SessionInfo | None = yield self.index.status(validate.identifier('session_id', session_id), (yield NOW))
        if info is None:
            if (yield from self.lost(store)):
                raise self._missing(f'session {session_id!r} is')
            # Never activated, or already ended or evicted (then a covering checkpoint was durable first):
            # a checkpoint now would create a document for a session that is not live, so nothing is written.
            raise SessionNotLive(f'session {session_id!r} is not live; nothing was checkpointed')
        checked_snapshot(session_id, snapshot)  # bad input is refused before anything is written, Redis included
        checked_messages(session_id, messages)
        if tenure is not None and info.tenure is not None and tenure != info.tenure:
            if (yield from self.lost(store)):
                raise self._unsure(session_id)
            raise stale(session_id, tenure, 'nothing was checkpointed')  # MongoDB's write would refuse it too
        order = yield self.index.next_token()  # the pool's one counter orders the messages, not this host's clock
        try:
            yield Durable(store.checkpoint, (session_id, snapshot, messages, info.turn_seq, order, tenure))
        except Fenced:  # older than the checkpoint MongoDB holds: Redis may have come back behind it (lost turns)
            if (yield from self.lost(store)):
                raise self._unsure(session_id) from None
            raise
        except SessionNotLive as refused:
            if info.state is SessionState.REAPING:  # its eviction's durable write landed first
                raise SessionReaping(f'session {session_id!r} is being evicted with its last checkpoint') from refused
            raise
        # Answered: the grace of on_missing_checkpoint starts again at the next request.
        yield calls.remove(self.keys.unsaved, [session_id])
        return info.turn_seq

    def restore(
        self,
        session_id: str,
        owner: str,
        store: SnapshotStore | None,
        make_room: Callable[[], bool] | None,
        approval_pending: bool = False,
    ) -> Steps[Restored]:
        """See `Lifecycle.restore`."""
        store = require(store, 'restore()')
        owner = validate.identifier('owner', owner)
        document = yield Durable(store.load, (validate.identifier('session_id', session_id),))
        state = document.get('state') if document is not None else None
        if document is None or state != SessionState.RESUMABLE:
            pooled: SessionInfo | None = yield self.index.status(session_id, (yield NOW))
            if pooled is not None and pooled.state is SessionState.REAPING:  # its eviction is still under way
                raise SessionReaping(f'session {session_id!r} is being evicted; restore it once it is resumable')
            if pooled is not None and (yield from self.lost(store)):  # perhaps a stale copy, until the rebuild
                raise self._unsure(session_id)
            if pooled is not None:
                raise SessionExists(f'session {session_id!r} is already live (restored by another replica?)')
            if state == SessionState.LIVE and (yield from self.lost(store)):
                raise self._missing(f'session {session_id!r} is')
            if state == SessionState.DELETED:
                raise SessionNotLive(
                    f'session {session_id!r} was deleted: it stayed resumable for '
                    f'resumable_retention_s={self.settings.resumable_retention_s} s after its eviction'
                )
            cut = interrupted_of(document) if document is not None else None
            also = f'; its turn {cut.seq} was cut off when it ended (see status())' if cut is not None else ''
            raise SessionNotLive(f'session {session_id!r} is not resumable (state: {state}){also}')
        resumable = resumable_of(document)
        ttl_s = (resumable.expires_at_ms - (yield NOW)) // 1000
        if ttl_s < 1:
            raise SessionNotLive(f'session {session_id!r} is past its hard deadline')
        reservation = yield from self.reserve(owner, resumable.tenant, new_token(), make_room, store)
        try:
            ttl_s = min(ttl_s, self.settings.limits(resumable.profile).max_ttl_s)
            info = yield self.index.activate(reservation, session_id, ttl_s, resumable.profile, (yield NOW),
                                             turn_seq=resumable.turn_seq, created_ms=resumable.created_ms)  # fmt: skip
        except LifecycleError:
            yield self.index.release(reservation)
            raise
        tenure = info.tenure if info.tenure is not None else (yield self.index.next_token())
        try:
            restored = yield Durable(store.restore, (session_id, tenure, owner))
        except PersistenceError:
            yield from self._undo(session_id, info.tenure)
            raise
        if restored is None:
            yield from self._undo(session_id, info.tenure)
            raise SessionNotLive(f'session {session_id!r} was restored, ended or evicted again meanwhile')
        messages = yield Durable(store.messages, (session_id,))
        interrupted = interrupted_of(restored)
        notes = [SANDBOX_RESET_NOTE, *([interrupted_note(interrupted)] if interrupted is not None else [])]
        return Restored(replace(info, tenure=tenure), restored.get('snapshot'), int(restored.get('checkpoint_seq', 0)),
                        messages, interrupted_turn=interrupted,
                        note=None if approval_pending else '\n'.join(notes))  # fmt: skip

    def serve(
        self,
        owner: str,
        position: list[str],
        wait_ms: int | None,
        snapshot: Callable[[str], object],
        on_notice: Callable[[Notice], object] | None,
        store: SnapshotStore | None,
    ) -> Steps[None]:
        """One round of serve_notices: read what arrived after `position[0]` (waiting up to `wait_ms`), and
        answer each: a `checkpoint_requested` checkpoints what `snapshot(session_id)` returns; every notice then
        goes to `on_notice`. The app's failures are logged; the next notice is served all the same."""
        batch, last = yield self.index.read_notices(owner, position[0], NOTICE_BATCH, wait_ms)
        if last is not None:
            position[0] = last  # past every entry read, the ones no notice could be included
        for notice in batch:
            try:
                if notice.kind is NoticeKind.CHECKPOINT_REQUESTED:
                    saved = yield Durable(snapshot, (notice.session_id,), inline=True)
                    args = checkpoint_args(notice.session_id, saved)
                    if args is not None:
                        yield from self.checkpoint(notice.session_id, *args, store, notice.tenure)
                if on_notice is not None:
                    yield Durable(on_notice, (notice,), inline=True)
            except LifecycleError as exc:  # the session left meanwhile, say: the next request will come
                log.info('notice %s of %s not answered: %s', notice.kind, notice.session_id, exc)
            except Exception:
                log.exception("notice %s of %s: the app's callback failed", notice.kind, notice.session_id)
