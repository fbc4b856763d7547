"""Lifecycle: the synchronous web-tier client of the session pool."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import redis
from redis.exceptions import NoScriptError

from lifecycle import validate
from lifecycle.background import Repeater
from lifecycle.clock import Clock, RedisClock
from lifecycle.errors import (
    BackendUnavailable,
    CapacityExceeded,
    ConfigurationError,
    InvalidArgument,
    LifecycleError,
    PersistenceError,
    ScriptFailed,
    SessionDamaged,
    SessionNotLive,
    SessionReaping,
)
from lifecycle.jobs import worktrees
from lifecycle.jobs.runs import Runs
from lifecycle.models import Notice, NoticeKind, PoolStats, ReapReason, Reservation, Restored, SessionInfo, SessionState
from lifecycle.pool.scripts import SOURCES
from lifecycle.pool.sessions import Call, SessionIndex
from lifecycle.sandboxes import SandboxDriver, driver_from_settings
from lifecycle.settings import Settings, redacted
from lifecycle.stores import SnapshotStore
from lifecycle.stores.documents import info_from_document, record_of, to_epoch_ms

log = logging.getLogger(__name__)
T = TypeVar('T')
MAKE_ROOM_ATTEMPTS = 3  # other replicas may take the freed slot first
MAKE_ROOM_CANDIDATES = 20
NOTICE_BATCH = 100
# A member no valid id could be (a hand edit, a foreign writer) decodes without raising, and encodes back to
# the same bytes: one bad entry never stops a sweep, and reconcile can still name and remove it.
ENCODING_ERRORS = 'surrogateescape'
DEFAULT_SOCKET_TIMEOUT_S = 5  # redis-py 8's, when a client is not given one
SERVE_WAIT_MS = 1000  # serve_notices' blocking read: how soon stop() is noticed


def refusal_counter(full: CapacityExceeded) -> str:
    """The shared counter a refusal adds to: 'refused:pool' or 'refused:tenant'."""
    return 'refused:tenant' if full.tenant else 'refused:pool'


@dataclass
class Turn:
    """One turn in flight: `seq` is the turn sequence it started from; `lease_lapsed` is set if a
    heartbeat found the busy lease gone (Redis unreachable for most of a lease), so the app knows the
    session was briefly unprotected."""

    session_id: str
    seq: int
    finished_seq: int | None = None
    lease_lapsed: bool = False


def new_token() -> str:
    """A fresh reservation or turn token."""
    return secrets.token_hex(12)


def unavailable(url: str, exc: Exception) -> BackendUnavailable:
    """The error for a Redis that could not be reached, naming the server (never its password)."""
    return BackendUnavailable(f'Redis at {redacted(url)} is unavailable: {exc}')


def pool_options(settings: Settings) -> dict[str, Any]:
    """The connection pool both clients build: calls beyond its size wait for a connection (bounded), never
    fail at once as redis-py's default pool does ('Too many connections')."""
    return {
        'max_connections': settings.redis_max_connections,
        'timeout': settings.redis_pool_timeout_s,
        'decode_responses': True,
        'encoding_errors': ENCODING_ERRORS,
    }


def read_block_ms(client: Any, block_ms: int | None) -> int | None:
    """How long one blocking read may wait: `block_ms`, but less than the connections' socket timeout (5 s
    by default in redis-py 8), which would otherwise end a quiet wait as an error."""
    if block_ms is None:
        return None
    timeout_s = client.connection_pool.connection_kwargs.get('socket_timeout', DEFAULT_SOCKET_TIMEOUT_S)
    return block_ms if timeout_s is None else max(1, min(block_ms, int(timeout_s * 800)))


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


def failed(call: Call[Any], exc: Exception) -> ScriptFailed:
    """The error for a call Redis answered with an error, naming the script or command."""
    what = call.script or (str(call.command[0]) if call.command else 'call')
    return ScriptFailed(f'Redis refused {what}: {exc}')


def parse_reply(call: Call[T], reply: Any) -> T:
    """`call.parse(reply)`; a reply it cannot read (a state no script expects) becomes ScriptFailed."""
    try:
        return call.parse(reply)
    except LifecycleError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ScriptFailed(f'unexpected reply of {call.script or call.command[:1]!r}: {reply!r} ({exc})') from exc


def each_result(call: Call[T], reply: Any) -> T | LifecycleError:
    """One call's result in a pipeline: its value, or the LifecycleError it ended with."""
    if isinstance(reply, redis.ConnectionError | redis.TimeoutError):
        raise BackendUnavailable(f'Redis connection lost in a pipeline: {reply}') from reply
    if isinstance(reply, Exception):
        return failed(call, reply)
    try:
        return parse_reply(call, reply)
    except LifecycleError as exc:
        return exc


@contextmanager
def unavailable_as_error(url: str) -> Iterator[None]:
    """Translate redis-py's connection failures into BackendUnavailable, naming the server."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise unavailable(url, exc) from exc


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


class Lifecycle:
    """The session pool as an API replica sees it: reserve, activate, touch, turn, close, status.

    Thread-safe: one instance per process is enough (redis-py pools its connections).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        redis_client: redis.Redis | None = None,
        clock: Clock | None = None,
        store: SnapshotStore | None = None,
        driver: SandboxDriver | None = None,
    ) -> None:
        self.settings = settings or Settings()
        # from_pool: the client owns the pool, so disconnect() closes its connections too.
        self.redis = redis_client or redis.Redis.from_pool(
            redis.BlockingConnectionPool.from_url(self.settings.redis_url, **pool_options(self.settings))
        )
        self.index = SessionIndex(self.settings)
        self.clock = clock or RedisClock(self.settings.clock_refresh_s)
        self._scripts = {name: self.redis.register_script(source) for name, source in SOURCES.items()}
        self._store = store
        self._owns_store = store is None
        self._driver = driver

    @property
    def store(self) -> SnapshotStore | None:
        """The MongoDB store when `mongo_url` is set (connected on first use), else None."""
        if self._store is None and self.settings.mongo_url is not None:
            from lifecycle.stores.mongo import MongoSnapshotStore

            self._store = MongoSnapshotStore(
                self.settings.mongo_url,
                self.settings.mongo_database,
                timeout_ms=self.settings.mongo_timeout_ms,
                write_concern=self.settings.mongo_write_concern,
            )
        return self._store

    @cached_property
    def runs(self) -> Runs:
        """Finished-run retention: start, append, finish, replay runs of event frames."""
        return Runs(self)

    @property
    def driver(self) -> SandboxDriver:
        """The sandbox driver `settings.sandbox_driver` names."""
        if self._driver is None:
            self._driver = driver_from_settings(self.settings)
        return self._driver

    def _require_store(self, what: str) -> SnapshotStore:
        store = self.store
        if store is None:
            raise ConfigurationError(f'{what} needs MongoDB: set LIFECYCLE_MONGO_URL')
        return store

    @classmethod
    def from_env(cls) -> Lifecycle:
        """A client configured from LIFECYCLE_* environment variables."""
        return cls(Settings())

    def __enter__(self) -> Lifecycle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def disconnect(self) -> None:
        """Close the Redis connections, and the MongoDB client if this client opened it."""
        self.redis.close()
        if self._owns_store and self._store is not None:
            self._store.close()
            self._store = None

    def now_ms(self) -> int:
        """Lifecycle time (Redis server time with a `RedisClock`), in epoch milliseconds."""
        clock = self.clock
        if isinstance(clock, RedisClock) and clock.needs_sync():
            with unavailable_as_error(self.settings.redis_url):
                sent_ns = time.monotonic_ns()
                server_time = self.redis.time()
                clock.observe(server_time, sent_ns, time.monotonic_ns())
        return clock.now_ms()

    def run(self, call: Call[T]) -> T:
        """Send one call to Redis and read its reply; Redis's own errors become ScriptFailed."""
        # A plain try (not `unavailable_as_error`): this is every call's hot path.
        try:
            reply: Any
            if call.script is not None:
                # EVALSHA straight through execute_command: redis-py's Script.__call__ costs ~5 µs more a call.
                script = self._scripts[call.script]
                command = ('EVALSHA', script.sha, len(call.keys), *call.keys, *call.args)
                try:
                    reply = self.redis.execute_command(*command)  # type: ignore[no-untyped-call]
                except NoScriptError:  # a restarted or flushed server: load the script once, then go on
                    self.redis.script_load(script.script)
                    reply = self.redis.execute_command(*command)  # type: ignore[no-untyped-call]
            else:
                reply = self.redis.execute_command(*call.command)  # type: ignore[no-untyped-call]  # untyped in redis-py
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise unavailable(self.settings.redis_url, exc) from exc
        except redis.RedisError as exc:
            raise failed(call, exc) from exc
        return parse_reply(call, reply)

    def run_many(self, calls: Sequence[Call[T]]) -> list[T]:
        """Send many calls in one pipelined round trip (each script is atomic; the batch is not); the first
        call that failed raises, after every reply was read (see `run_each`)."""
        results = self.run_each(calls)
        for result in results:
            if isinstance(result, LifecycleError):
                raise result
        return results  # type: ignore[return-value]  # no LifecycleError is left in it

    def run_each(self, calls: Sequence[Call[T]]) -> list[T | LifecycleError]:
        """Send many calls in one pipelined round trip; each call's result, or the LifecycleError it ended
        with (a refusal, ScriptFailed), so one bad session never hides what the others did.

        A call answered NOSCRIPT (the server lost its scripts after redis-py checked them) never ran: it
        is sent again once. A Redis that cannot be reached raises BackendUnavailable for the whole batch.
        """
        replies = self._pipeline(calls)
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if lost:
            for i, reply in zip(lost, self._pipeline([calls[i] for i in lost]), strict=True):
                replies[i] = reply
        results: list[T | LifecycleError] = []
        for call, reply in zip(calls, replies, strict=True):
            result: T | LifecycleError = each_result(call, reply)
            results.append(result)
        return results

    def _pipeline(self, calls: Sequence[Call[Any]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for call in calls:
            if call.script is not None:
                self._scripts[call.script](keys=call.keys, args=call.args, client=pipe)
            else:
                pipe.execute_command(*call.command)  # type: ignore[no-untyped-call]  # untyped in redis-py
        with unavailable_as_error(self.settings.redis_url):
            return pipe.execute(raise_on_error=False)

    # -- the public surface ------------------------------------------------------------------------

    def reserve(
        self, owner: str, tenant: str | None = None, *, token: str | None = None, make_room: bool = False
    ) -> Reservation:
        """Hold a slot for a session being created; raises CapacityExceeded when the pool or tenant is full.

        `token` is an idempotency key: reserving again with the same token returns the same
        reservation and never takes a second slot. With `make_room`, a full pool first evicts its least
        recently active session idle for at least `min_idle_s` (durably, as a worker would) and retries.
        """
        token = new_token() if token is None else token
        make_room = validate.flag('make_room', make_room)
        for _ in range(MAKE_ROOM_ATTEMPTS):
            try:
                return self.run(self.index.reserve(owner, tenant, token, self.now_ms()))
            except CapacityExceeded as full:
                if not make_room or full.tenant is not None or not self._make_room():
                    self._count_refusal(full)
                    raise
        return self.run(self.index.reserve(owner, tenant, token, self.now_ms()))

    def _count_refusal(self, full: CapacityExceeded) -> None:
        try:
            self.redis.hincrby(self.index.keys.counters, refusal_counter(full), 1)
        except redis.RedisError:
            log.debug('refusal not counted', exc_info=True)

    def _make_room(self) -> bool:
        """Evict one idle session to free a slot; False when none can go (all busy, recent or unsaved)."""
        if self.store is None:
            return False
        from lifecycle.reaper.eviction import Evictor, Outcome

        evictor = Evictor(self, self.store, self.driver)
        now = self.now_ms()
        bound = now - self.settings.min_idle_s * 1000
        for session_id, last_active in self.run(self.index.live_below(bound, MAKE_ROOM_CANDIDATES)):
            result = evictor.evict(session_id, ReapReason.MAKE_ROOM, bound, last_active)
            if result.outcome is Outcome.EVICTED:
                return True
        return False

    def activate(
        self, reservation: Reservation, session_id: str, ttl_seconds: int | None = None, profile: str | None = None
    ) -> SessionInfo:
        """Turn `reservation` into live session `session_id`, ending hard at `expires_at`."""
        return self.run(self.index.activate(reservation, session_id, ttl_seconds, profile, self.now_ms()))

    def release(self, reservation: Reservation) -> bool:
        """Give back the slot of a reservation that will not be activated; idempotent."""
        return self.run(self.index.release(reservation))

    def touch(self, session_id: str) -> bool:
        """Stamp genuine activity (a user message, a turn start or end; never a poll). True if stamped."""
        return self.run(self.index.touch([session_id], self.now_ms())) == 1

    def touch_many(self, session_ids: Sequence[str]) -> int:
        """Stamp many sessions in one round trip; returns how many were live and stamped."""
        return self.run(self.index.touch(session_ids, self.now_ms()))

    @contextmanager
    def turn(self, session_id: str) -> Iterator[Turn]:
        """Hold the session busy while the body runs, renewing the busy lease from a heartbeat thread.

        Raises SessionNotLive or SessionReaping before the body runs. On exit the busy lease is
        dropped, the turn sequence bumped and activity stamped.
        """
        token = new_token()
        turn = Turn(session_id, self.run(self.index.begin_turn(session_id, token, self.now_ms())))

        def renew() -> None:
            if self.run(self.index.renew_turn(session_id, token, self.now_ms())) != 1:
                turn.lease_lapsed = True
                log.warning('turn on %s: busy lease had lapsed or the session left the pool', session_id)

        heartbeat = Repeater(f'turn-{session_id}', self.settings.busy_lease_s / 3, renew).start()
        body_failed = False
        try:
            yield turn
        except BaseException:
            body_failed = True
            raise
        finally:
            heartbeat.stop()
            try:
                turn.finished_seq = self.run(self.index.end_turn(session_id, token, self.now_ms()))
            except BackendUnavailable:
                # The busy lease runs out on its own; never hide the body's own exception.
                if not body_failed:
                    raise
                log.warning('turn on %s: could not record its end; the busy lease will lapse', session_id)

    def close(self, session_id: str) -> bool:
        """End a live session and give its slot back; False if it was not live.

        With MongoDB configured, its document is marked closed (best effort: the slot is back either way).
        """
        closed = self.run(self.index.close(session_id))
        if closed is None:
            return False
        if self.store is not None:
            try:
                token = self.run(self.index.next_token())
                self.store.end(record_of(closed), SessionState.CLOSED, token, self.settings.mongo_timeout_ms)
            except PersistenceError as exc:
                log.warning('closed %s, but MongoDB did not record it: %s', session_id, exc)
        return True

    def status(self, session_id: str) -> SessionInfo | None:
        """The session as lifecycle sees it, without counting as activity; None if unknown.

        Live sessions come from Redis; others (resumable, expired, closed) from MongoDB when configured.
        """
        info = self.run(self.index.status(session_id, self.now_ms()))
        if info is not None or self.store is None:
            return info
        return info_from_document(self.store.load(session_id))

    def register_worktree(self, session_id: str, path: str | os.PathLike[str]) -> str:
        """Record that the git worktree at `path` (absolute, real) belongs to `session_id`, so the
        orphan cleaner knows its owner; returns the normalised path."""
        normal, session_id = worktrees.registration(session_id, path, self.settings.worktree_root)
        self.run(Call(lambda reply: None, command=('HSET', self.index.keys.worktrees, normal, session_id)))
        return normal

    def checkpoint(
        self, session_id: str, snapshot: Mapping[str, Any], messages: Sequence[Mapping[str, Any]] | None = None
    ) -> int:
        """Durably save the app's snapshot of a live session (messages first, in order, then the document).

        The checkpoint covers the session's finished turns so far, which is what lets the reaper evict it
        as resumable. Returns the turn sequence it covers. Everything is checked before the first write:
        InvalidArgument for a snapshot or message MongoDB cannot store (naming it), SessionNotLive for a
        session that is not live. Raises PersistenceError unless MongoDB acknowledged every write with
        `w: majority, j: true` (messages are idempotent upserts: checkpointing again converges).
        """
        store = self._require_store('checkpoint()')
        info = self.run(self.index.status(validate.identifier('session_id', session_id), self.now_ms()))
        if info is None:
            # Never activated, or already ended or evicted (then a covering checkpoint was durable first):
            # a checkpoint now would create a document for a session that is not live, so nothing is written.
            raise SessionNotLive(f'session {session_id!r} is not live; nothing was checkpointed')
        try:
            store.checkpoint(session_id, snapshot, messages, info.turn_seq)
        except SessionNotLive as refused:
            if info.state is SessionState.REAPING:  # its eviction's durable write landed first
                raise SessionReaping(f'session {session_id!r} is being evicted with its last checkpoint') from refused
            raise
        # Answered: the grace of on_missing_checkpoint starts again at the next request.
        self.run(Call(lambda reply: None, command=('ZREM', self.index.keys.unsaved, session_id)))
        return info.turn_seq

    def restore(self, session_id: str, owner: str, *, make_room: bool = False) -> Restored:
        """Make a resumable session live again under `owner`, with its last checkpoint.

        Its sandbox was released when it was evicted, so the result says `sandbox_reset=True`: tell the
        agent its sandbox was wiped (unless an approval is pending). The hard deadline stays where it was.
        Raises SessionNotLive if it is not resumable (never existed, expired, closed), SessionExists if
        another replica restored it first, CapacityExceeded when the pool is full.
        """
        store = self._require_store('restore()')
        owner = validate.identifier('owner', owner)
        document = store.load(validate.identifier('session_id', session_id))
        state = document.get('state') if document is not None else None
        if document is None or state != SessionState.RESUMABLE:
            raise SessionNotLive(f'session {session_id!r} is not resumable (state: {state})')
        resumable = resumable_of(document)
        ttl_s = (resumable.expires_at_ms - self.now_ms()) // 1000
        if ttl_s < 1:
            raise SessionNotLive(f'session {session_id!r} is past its hard deadline')
        reservation = self.reserve(owner, resumable.tenant, make_room=make_room)
        try:
            ttl_s = min(ttl_s, self.settings.limits(resumable.profile).max_ttl_s)
            info = self.run(
                self.index.activate(
                    reservation, session_id, ttl_s, resumable.profile, self.now_ms(),
                    turn_seq=resumable.turn_seq, created_ms=resumable.created_ms,
                )
            )  # fmt: skip
        except LifecycleError:
            self.release(reservation)
            raise
        try:
            restored = store.restore(session_id, self.run(self.index.next_token()), owner)
        except PersistenceError:
            self.run(self.index.close(session_id))
            raise
        if restored is None:
            self.run(self.index.close(session_id))
            raise SessionNotLive(f'session {session_id!r} was restored, ended or evicted again meanwhile')
        return Restored(
            info, restored.get('snapshot'), int(restored.get('checkpoint_seq', 0)), store.messages(session_id)
        )

    def notices(self, owner: str, *, after: str = '0', block_s: float | None = None) -> Iterator[Notice]:
        """Notices to replica `owner` after stream id `after`; with `block_s`, waits for more, forever."""
        block_ms = read_block_ms(self.redis, validate.wait_ms('block_s', block_s))
        while True:
            batch = self.run(self.index.read_notices(owner, after, NOTICE_BATCH, block_ms))
            yield from batch
            if batch:
                after = batch[-1].id
            elif block_ms is None:
                return

    def serve_notices(
        self,
        owner: str,
        *,
        snapshot: Callable[[str], object],
        on_notice: Callable[[Notice], None] | None = None,
    ) -> Repeater:
        """Answer this replica's notices from a daemon thread, starting with the ones that arrive from now on:
        each `checkpoint_requested` calls `snapshot(session_id)` and checkpoints what it returns (a mapping,
        `(mapping, messages)`, or None for nothing to save); every notice then goes to `on_notice` (drop a
        runtime on `evicted`, say). `stop()` it on shutdown. Failures are logged; the thread goes on."""
        owner = validate.identifier('owner', owner)
        position = [self.run(self.index.last_notice_id(owner))]

        def serve() -> None:
            try:
                batch = self.run(
                    self.index.read_notices(owner, position[0], NOTICE_BATCH, read_block_ms(self.redis, 1000))
                )
            except BackendUnavailable as exc:
                log.warning('notices of %s: %s; retrying in 1 s', owner, exc)
                time.sleep(1)
                return
            for notice in batch:
                position[0] = notice.id
                self._answer(notice, snapshot, on_notice)

        return Repeater(f'notices-{owner}', 0, serve).start()

    def _answer(
        self, notice: Notice, snapshot: Callable[[str], object], on_notice: Callable[[Notice], None] | None
    ) -> None:
        try:
            if notice.kind is NoticeKind.CHECKPOINT_REQUESTED:
                args = checkpoint_args(notice.session_id, snapshot(notice.session_id))
                if args is not None:
                    self.checkpoint(notice.session_id, *args)
            if on_notice is not None:
                on_notice(notice)
        except LifecycleError as exc:  # the session left meanwhile, say: the next request will come
            log.info('notice %s of %s not answered: %s', notice.kind, notice.session_id, exc)
        except Exception:
            log.exception("notice %s of %s: the app's callback failed", notice.kind, notice.session_id)

    def stats(self) -> PoolStats:
        """Live, reserved, busy and reaping counts against the cap, read atomically."""
        return self.run(self.index.stats(self.now_ms()))

    def heartbeat(self, owner: str) -> None:
        """Announce that API replica `owner` is alive; its sessions are recovered if it stops."""
        self.run(self.index.heartbeat(owner, self.now_ms()))

    def start_heartbeat(self, owner: str) -> Repeater:
        """Heartbeat now, then every third of `replica_ttl_s` from a daemon thread; `stop()` it on shutdown."""
        self.heartbeat(owner)
        return Repeater(f'heartbeat-{owner}', self.settings.replica_ttl_s / 3, lambda: self.heartbeat(owner)).start()
