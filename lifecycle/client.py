"""Lifecycle: the synchronous web-tier client of the session pool."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property
from typing import Any

import redis

from lifecycle import validate
from lifecycle.background import Repeater
from lifecycle.clock import Clock
from lifecycle.errors import BackendUnavailable
from lifecycle.flows import NOTICE_BATCH, SERVE_WAIT_MS, Turn, Wiring, new_token
from lifecycle.jobs.runs import Runs
from lifecycle.models import Notice, PoolStats, ReapReason, Reservation, Restored, SessionInfo
from lifecycle.pool import calls
from lifecycle.pool.executor import Executor
from lifecycle.pool.sessions import SessionIndex
from lifecycle.pool.stamper import Stamper
from lifecycle.pool.trail import Trail
from lifecycle.reaper.eviction import Evictor, Outcome
from lifecycle.sandboxes import SandboxDriver
from lifecycle.settings import Settings
from lifecycle.stores import SnapshotStore

log = logging.getLogger(__name__)
MAKE_ROOM_CANDIDATES = 20
__all__ = ['Lifecycle', 'Turn']


class Lifecycle(Wiring):
    """The session pool as an API replica sees it: reserve, activate, touch, turn, close, status.

    Thread-safe: one instance per process is enough (redis-py pools its connections). Every dependency
    can be injected: a Redis client (TLS, Sentinel, a test double), a clock, a store, a sandbox driver.

    Fencing: `activate()` and `restore()` return `SessionInfo.tenure`. Pass it as `tenure=` to every later call on
    that session from this replica's copy (touch, turn, checkpoint, extend, pin, unpin, close): a replica that
    paused while the session was evicted and restored elsewhere is then refused (Fenced) and changes nothing of
    the new owner's session. Without it, a call is not fenced.
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
        settings = settings or Settings()
        self.pool = Executor(settings, redis_client, clock)
        super().__init__(settings, self.pool.keys, self.pool.clock, store, driver)

    @property
    def redis(self) -> redis.Redis:
        """The Redis client (for inspection and tests; every pool transition goes through a script)."""
        return self.pool.redis

    def _driver_clock(self) -> Clock:
        return self.pool  # its now_ms() learns Redis time when it must

    @classmethod
    def from_env(cls) -> Lifecycle:
        """A client configured from LIFECYCLE_* environment variables."""
        return cls(Settings())

    @cached_property
    def runs(self) -> Runs:
        """Finished-run retention: start, append, finish, replay runs of event frames."""
        return Runs(self.pool)

    def __enter__(self) -> Lifecycle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def disconnect(self) -> None:
        """Send the coalesced stamps, close the Redis connections, and the MongoDB client if this client opened it."""
        if '_stamper' in self.__dict__:
            self.__dict__.pop('_stamper').close()
        self.pool.close()
        self._close_driver()
        self._close_store()

    def now_ms(self) -> int:
        """Lifecycle time (Redis server time with a `RedisClock`), in epoch milliseconds."""
        return self.pool.now_ms()

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
        room = self._make_room if validate.flag('make_room', make_room) else None
        return self.pool.do(self.flows.reserve(owner, tenant, token, room, self.store))

    def _make_room(self) -> bool:
        """Evict one idle session to free a slot; False when none can go (all busy, recent or unsaved)."""
        return make_room(self.pool, self.store, self.driver)

    def activate(
        self, reservation: Reservation, session_id: str, ttl_seconds: int | None = None, profile: str | None = None
    ) -> SessionInfo:
        """Turn `reservation` into live session `session_id`, ending hard at `expires_at`."""
        return self.pool.do(self.flows.activate(reservation, session_id, ttl_seconds, profile, self.store))

    def release(self, reservation: Reservation, *, failed: bool = False) -> bool:
        """Give back the slot of a reservation that will not be activated; idempotent. `failed=True` when its
        sandbox could not be created: counted once (`lifecycle_failed_starts_total`)."""
        return self.pool.run(self.index.release(reservation, validate.flag('failed', failed)))

    def touch(self, session_id: str, *, tenure: int | None = None) -> bool:
        """Stamp genuine activity (a user message, a turn start or end; never a poll). True if the session is
        live (its activity now at this time or later: a stamp never moves it back); False if it is not.
        With a stale `tenure` (see the class), Fenced (coalesced: the stamp is dropped, and logged).

        With `touch_flush_ms` > 0 it returns True at once and the stamp goes out coalesced with others within
        that many ms (see `flush_touches`); `touch_many` always sends at once, with the reply.
        """
        if self.settings.touch_flush_ms:
            self._stamper.touch(session_id, tenure)
            return True
        return self.pool.do(self.flows.touch([session_id], self.store, tenure)) == 1

    @cached_property
    def _stamper(self) -> Stamper:
        return Stamper(self.pool, self.index, self.settings.touch_flush_ms / 1000, self.settings.touch_max_pending)

    def flush_touches(self) -> int:
        """Send the coalesced stamps now; returns how many sessions' activity moved (0 when not coalescing)."""
        return self._stamper.flush() if '_stamper' in self.__dict__ else 0

    def touch_many(self, session_ids: Sequence[str]) -> int:
        """Stamp many sessions in one round trip; returns how many are live (each stamped at this time or later;
        a second round trip only when some stamp did not move, to tell a repeat from a missing session)."""
        return self.pool.do(self.flows.touch(session_ids, self.store))

    @contextmanager
    def turn(self, session_id: str, *, tenure: int | None = None) -> Iterator[Turn]:
        """Hold the session busy while the body runs, renewing the busy lease from a heartbeat thread.

        Raises SessionNotLive or SessionReaping (Fenced, with a stale `tenure`) before the body runs. On exit
        the busy lease is dropped, the turn sequence bumped and activity stamped; a turn whose session was
        evicted and restored meanwhile touches nothing of the new life (`finished_seq` is None).
        """
        token = new_token()
        turn = self.pool.do(self.flows.begin_turn(session_id, token, self.store, tenure))
        renew = Repeater(f'turn-{session_id}', self.settings.busy_lease_s / 3,
                         lambda: self.pool.do(self.flows.renew_turn(turn, token))).start()  # fmt: skip
        body_failed = False
        try:
            yield turn
        except BaseException:
            body_failed = True
            raise
        finally:
            renew.stop()
            try:
                turn.finished_seq = self.pool.do(self.flows.end_turn(turn, token))
            except BackendUnavailable:
                # The busy lease runs out on its own; never hide the body's own exception.
                if not body_failed:
                    raise
                log.warning('turn on %s: could not record its end; the busy lease will lapse', session_id)

    def close(self, session_id: str, *, tenure: int | None = None) -> bool:
        """End a live session and give its slot back; False if it was not live; Fenced with a stale `tenure`.

        With MongoDB configured, its document is marked closed (best effort: the slot is back either way).
        """
        return self.pool.do(self.flows.close(session_id, self.store, tenure))

    def extend(self, session_id: str, ttl_seconds: int, *, tenure: int | None = None) -> SessionInfo:
        """Move a live session's hard deadline to `ttl_seconds` from now, never back and never past its profile's
        `max_ttl_s` from creation (`expires_at` of the result says where it is). Recorded in MongoDB too, and
        the sandbox driver is told where it can move its sandbox's own deadline (the docker driver cannot: a
        container keeps the deadline it started with). SessionReaping while it is being evicted, SessionNotLive
        if it is not live or past its deadline; PersistenceError if MongoDB did not record it (retry); Fenced
        with a stale `tenure`."""
        return self.pool.do(self.flows.extend(session_id, ttl_seconds, self.store, self.driver, tenure))

    def pin(self, session_id: str, *, tenure: int | None = None) -> bool:
        """Keep a live session from idle, LRU and make-room eviction until `unpin` (its hard deadline still ends
        it, and a lost replica's sessions are still recovered); True if it was not pinned yet. PinLimitReached at
        `max_pinned` in the pool (or `max_pinned_per_tenant` for its tenant); SessionNotLive, SessionReaping.
        Pins live in Redis: a pool rebuilt after Redis lost its state has none (its sessions stay resumable)."""
        return self.pool.do(self.flows.pin(session_id, self.store, tenure))

    def unpin(self, session_id: str, *, tenure: int | None = None) -> bool:
        """Let idle and LRU eviction take the session again (the next idle sweep judges it); True if it was pinned."""
        return self.pool.do(self.flows.unpin(session_id, self.store, tenure))

    def status(self, session_id: str) -> SessionInfo | None:
        """The session as lifecycle sees it, without counting as activity; None if unknown.

        Live sessions come from Redis; others (resumable, expired, closed) from MongoDB when configured.
        """
        return self.pool.do(self.flows.status(session_id, self.store))

    def trail(self, session_id: str) -> Trail | None:
        """Why the session was kept or reaped: its last decisions (kept busy, kept not checkpointed, pinned,
        warned, aborted with the cause, ...; at most `trail_length`, oldest first, a repeat counted) and what last
        stamped its activity. Of a live session from Redis, of one evicted or expired the trail its last write
        recorded; None if unknown. Never counts as activity."""
        return self.pool.do(self.flows.trail(session_id, self.store))

    def register_worktree(self, session_id: str, path: str | os.PathLike[str]) -> str:
        """Record that the git worktree at `path` (absolute, real) belongs to `session_id`, so the
        orphan cleaner knows its owner; returns the normalised path."""
        return self.pool.do(self.flows.register_worktree(session_id, path))

    def checkpoint(
        self,
        session_id: str,
        snapshot: Mapping[str, Any],
        messages: Sequence[Mapping[str, Any]] | None = None,
        *,
        tenure: int | None = None,
    ) -> int:
        """Durably save the app's snapshot of a live session (messages first, in order, then the document).

        The checkpoint covers the session's finished turns so far, which is what lets the reaper evict it
        as resumable. Returns the turn sequence it covers. Everything is checked before the first write:
        InvalidArgument for a snapshot or message MongoDB cannot store (naming it), SessionNotLive for a
        session that is not live. Raises PersistenceError unless MongoDB acknowledged every write with
        `w: majority, j: true` (messages are idempotent upserts: checkpointing again converges).

        `tenure`: the `SessionInfo.tenure` of the activate() or restore() this replica's copy came from. A replica
        that paused while the session was evicted and restored elsewhere is then refused (Fenced), and nothing
        it wrote counts: the new owner's state stays. Without it, the checkpoint is not fenced.
        """
        return self.pool.do(self.flows.checkpoint(session_id, snapshot, messages, self.store, tenure))

    def restore(
        self, session_id: str, owner: str, *, make_room: bool = False, approval_pending: bool = False
    ) -> Restored:
        """Make a resumable session live again under `owner`, with its last checkpoint.

        Its sandbox was released when it was evicted (`sandbox_reset=True`), and a turn in flight when it left
        is in `interrupted_turn`: `note` is the text to give the agent about both, or None with
        `approval_pending=True` (a message injected while a tool call awaits approval would orphan its result;
        tell the agent after the approval). The hard deadline stays where it was.
        Raises SessionNotLive if it is not resumable (never existed, expired, closed), SessionExists if
        another replica restored it first, CapacityExceeded when the pool is full.
        """
        room = self._make_room if validate.flag('make_room', make_room) else None
        pending = validate.flag('approval_pending', approval_pending)
        return self.pool.do(self.flows.restore(session_id, owner, self.store, room, pending))

    def notices(self, owner: str, *, after: str = '0', block_s: float | None = None) -> Iterator[Notice]:
        """Notices to replica `owner` after stream id `after`; with `block_s`, waits for more, forever."""
        block_ms = self.pool.read_block_ms(validate.wait_ms('block_s', block_s))
        while True:
            batch, last = self.pool.run(self.index.read_notices(owner, after, NOTICE_BATCH, block_ms))
            yield from batch
            if last is not None:
                after = last
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
        position = [self.pool.run(self.index.last_notice_id(owner))]
        wait_ms = self.pool.read_block_ms(SERVE_WAIT_MS)

        def serve() -> None:
            self.pool.do(self.flows.serve(owner, position, wait_ms, snapshot, on_notice, self.store))

        return Repeater(f'notices-{owner}', 0, serve, retry_s=1).start()

    def stats(self) -> PoolStats:
        """Live, reserved, busy and reaping counts against the cap, read atomically."""
        return self.pool.run(self.index.stats(self.pool.now_ms()))

    def heartbeat(self, owner: str) -> None:
        """Announce that API replica `owner` is alive; its sessions are recovered if it stops."""
        self.pool.run(self.index.heartbeat(owner, self.pool.now_ms()))

    def start_heartbeat(self, owner: str) -> Repeater:
        """Heartbeat now, then every third of `replica_ttl_s` from a daemon thread; `stop()` it on shutdown."""
        self.heartbeat(owner)
        self.pool.do(self.flows.announce(owner, self.store))
        return Repeater(f'heartbeat-{owner}', self.settings.replica_ttl_s / 3, lambda: self.heartbeat(owner)).start()


def make_room(pool: Executor, store: SnapshotStore | None, driver: SandboxDriver) -> bool:
    """Evict the least recently active session idle for `min_idle_s`, durably, to free a slot; False when
    none can go (all busy, recent or unsaved, or persistence off)."""
    if store is None:
        return False
    evictor = Evictor(pool, store, driver)
    now = pool.now_ms()
    bound = now - pool.settings.min_idle_s * 1000
    index = SessionIndex(pool.settings, pool.keys)
    # Pinned sessions are passed over (the claim refuses them): read past as many as may be pinned.
    oldest = pool.run(index.live_below(bound, MAKE_ROOM_CANDIDATES + pool.settings.pin_limit))
    pinned = pool.run(calls.scores(pool.keys.pinned, [session_id for session_id, _ in oldest])) if oldest else []
    unpinned = [(s, at) for (s, at), pin in zip(oldest, pinned, strict=True) if pin is None]
    for session_id, last_active in unpinned[:MAKE_ROOM_CANDIDATES]:
        if evictor.evict(session_id, ReapReason.MAKE_ROOM, bound, last_active).outcome is Outcome.EVICTED:
            return True
    return False
