"""AsyncLifecycle: the asyncio twin of `Lifecycle`, driving the same flows on the same scripts."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import cached_property
from typing import Any, TypeVar

import redis.asyncio as aredis

from lifecycle import validate
from lifecycle.background import AsyncRepeater
from lifecycle.client import make_room
from lifecycle.clock import Clock
from lifecycle.errors import BackendUnavailable
from lifecycle.flows import NOTICE_BATCH, SERVE_WAIT_MS, Turn, Wiring, new_token
from lifecycle.jobs.runs import AsyncRuns
from lifecycle.models import Notice, PoolStats, Reservation, Restored, SessionInfo
from lifecycle.pool.executor import AsyncExecutor, Executor, sync_twin
from lifecycle.pool.stamper import AsyncStamper
from lifecycle.pool.trail import Trail
from lifecycle.sandboxes import SandboxDriver
from lifecycle.settings import Settings
from lifecycle.stores import SnapshotStore, store_from_settings

log = logging.getLogger(__name__)
T = TypeVar('T')


class AsyncLifecycle(Wiring):
    """The session pool for asyncio API replicas; every method mirrors `Lifecycle`'s.

    Its own store is native async (pymongo's AsyncMongoClient); a store passed in whose methods are plain
    functions runs them in worker threads. Every dependency passed in is the one used: client (make_room's
    sync evictor uses a sync twin of its connection), clock, store and driver. An operation of several writes
    (restore, checkpoint, close, the end of a turn) runs to its end even if its caller is cancelled.
    """

    asynchronous = True

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        redis_client: aredis.Redis | None = None,
        clock: Clock | None = None,
        store: SnapshotStore | None = None,
        driver: SandboxDriver | None = None,
    ) -> None:
        settings = settings or Settings()
        self.pool = AsyncExecutor(settings, redis_client, clock)
        super().__init__(settings, self.pool.keys, self.pool.clock, store, driver)
        self._evicting: Executor | None = None
        self._twin_lock = threading.Lock()
        self._evicting_store: SnapshotStore | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self._stamper: AsyncStamper | None = None

    @property
    def redis(self) -> aredis.Redis:
        return self.pool.redis

    @classmethod
    def from_env(cls) -> AsyncLifecycle:
        """A client configured from LIFECYCLE_* environment variables."""
        return cls(Settings())

    @cached_property
    def runs(self) -> AsyncRuns:
        """See `Lifecycle.runs`."""
        return AsyncRuns(self.pool)

    async def __aenter__(self) -> AsyncLifecycle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def disconnect(self) -> None:
        """Record the ends of turns still being recorded, then close the Redis connections, and the MongoDB
        client if this client opened it."""
        if self._pending:
            await asyncio.wait(self._pending, timeout=self.settings.busy_lease_s)
        if self._stamper is not None:
            stamper, self._stamper = self._stamper, None
            await stamper.close()
        await self.pool.close()
        if self._evicting is not None:
            self._evicting.close()
            if self._evicting_store is not None and self._evicting_store is not self._store:
                self._evicting_store.close()
        self._close_driver()
        closing = self._close_store()
        if inspect.isawaitable(closing):
            await closing

    async def now_ms(self) -> int:
        """See `Lifecycle.now_ms`."""
        return await self.pool.now_ms()

    def _sync_pool(self) -> Executor:
        """A sync twin of this client's Redis connection (same server, credentials, TLS) with its clock."""
        with self._twin_lock:  # make_room's thread and the loop may both ask first
            if self._evicting is None:
                self._evicting = Executor(self.settings, sync_twin(self.pool.redis, self.settings), self.clock)
            return self._evicting

    def _driver_clock(self) -> Clock:
        return self._sync_pool()  # the driver is sync: its deadlines read Redis time through the sync twin

    def _make_room(self) -> bool:
        """See `Lifecycle.reserve`: evictions are sync (the worker's evictor), so this runs in a thread, on the
        sync twin, and a sync store (the one passed in if it is sync)."""
        pool = self._sync_pool()
        if self._evicting_store is None:
            store = self.store
            sync = store is not None and not inspect.iscoroutinefunction(store.mark_resumable)
            self._evicting_store = store if sync else store_from_settings(self.settings)
        return make_room(pool, self._evicting_store, self.driver)

    async def trail(self, session_id: str) -> Trail | None:
        """See `Lifecycle.trail`."""
        return await self.pool.do(self.flows.trail(session_id, self.store))

    async def register_worktree(self, session_id: str, path: str | os.PathLike[str]) -> str:
        """See `Lifecycle.register_worktree`."""
        return await self.pool.do(self.flows.register_worktree(session_id, path))

    async def reserve(
        self, owner: str, tenant: str | None = None, *, token: str | None = None, make_room: bool = False
    ) -> Reservation:
        """See `Lifecycle.reserve`."""
        token = new_token() if token is None else token
        room = self._make_room if validate.flag('make_room', make_room) else None
        return await self.pool.do(self.flows.reserve(owner, tenant, token, room, self.store))

    async def activate(
        self, reservation: Reservation, session_id: str, ttl_seconds: int | None = None, profile: str | None = None
    ) -> SessionInfo:
        """See `Lifecycle.activate`."""
        return await self.pool.do(self.flows.activate(reservation, session_id, ttl_seconds, profile, self.store))

    async def release(self, reservation: Reservation, *, failed: bool = False) -> bool:
        """See `Lifecycle.release`."""
        return await self.pool.run(self.index.release(reservation, validate.flag('failed', failed)))

    async def touch(self, session_id: str, *, tenure: int | None = None) -> bool:
        """See `Lifecycle.touch`."""
        if self.settings.touch_flush_ms:
            if self._stamper is None:
                self._stamper = AsyncStamper(self.pool, self.index, self.settings.touch_flush_ms / 1000,
                                             self.settings.touch_max_pending)  # fmt: skip
            await self._stamper.touch(session_id, tenure)
            return True
        return await self.pool.do(self.flows.touch([session_id], self.store, tenure)) == 1

    async def flush_touches(self) -> int:
        """See `Lifecycle.flush_touches`."""
        return await self._stamper.flush() if self._stamper is not None else 0

    async def touch_many(self, session_ids: Sequence[str]) -> int:
        """See `Lifecycle.touch_many`."""
        return await self.pool.do(self.flows.touch(session_ids, self.store))

    @asynccontextmanager
    async def turn(self, session_id: str, *, tenure: int | None = None) -> AsyncIterator[Turn]:
        """See `Lifecycle.turn`; the heartbeat is an asyncio task.

        If the body is cancelled (a shutdown), the end of the turn is still recorded, shielded from the
        cancellation, and the cancellation propagates.
        """
        token = new_token()
        turn = await self.pool.do(self.flows.begin_turn(session_id, token, self.store, tenure))
        renew = AsyncRepeater(f'turn-{session_id}', self.settings.busy_lease_s / 3,
                              lambda: self.pool.do(self.flows.renew_turn(turn, token))).start()  # fmt: skip
        body_failed = False
        try:
            yield turn
        except BaseException:
            body_failed = True
            raise
        finally:
            # Scheduled before anything is awaited: a cancellation that keeps firing (anyio's cancel scopes, which
            # Starlette uses when a client disconnects) cannot stop the end of the turn from being recorded.
            try:
                turn.finished_seq = await self._to_the_end(self._end_turn(renew, turn, token))
            except BackendUnavailable:
                if not body_failed:
                    raise
                log.warning('turn on %s: could not record its end; the busy lease will lapse', session_id)

    async def _end_turn(self, renew: AsyncRepeater, turn: Turn, token: str) -> int | None:
        await renew.stop()
        return await self.pool.do(self.flows.end_turn(turn, token))

    async def _to_the_end(self, operation: Awaitable[T]) -> T:
        """Run an operation of several writes to its end even if the caller is cancelled (a shutdown, a client
        gone): its writes never stop half way (a session live in Redis and resumable in MongoDB, say). The
        caller's cancellation still propagates; disconnect() waits for what is still running."""
        task = asyncio.ensure_future(operation)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        task.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved: never "unretrieved"
        return await asyncio.shield(task)

    async def close(self, session_id: str, *, tenure: int | None = None) -> bool:
        """See `Lifecycle.close`."""
        return await self._to_the_end(self.pool.do(self.flows.close(session_id, self.store, tenure)))

    async def extend(self, session_id: str, ttl_seconds: int, *, tenure: int | None = None) -> SessionInfo:
        """See `Lifecycle.extend`."""
        return await self._to_the_end(self.pool.do(self.flows.extend(session_id, ttl_seconds, self.store,
                                                                     self.driver, tenure)))  # fmt: skip

    async def pin(self, session_id: str, *, tenure: int | None = None) -> bool:
        """See `Lifecycle.pin`."""
        return await self.pool.do(self.flows.pin(session_id, self.store, tenure))

    async def unpin(self, session_id: str, *, tenure: int | None = None) -> bool:
        """See `Lifecycle.unpin`."""
        return await self.pool.do(self.flows.unpin(session_id, self.store, tenure))

    async def status(self, session_id: str) -> SessionInfo | None:
        """See `Lifecycle.status`."""
        return await self.pool.do(self.flows.status(session_id, self.store))

    async def checkpoint(
        self,
        session_id: str,
        snapshot: Mapping[str, Any],
        messages: Sequence[Mapping[str, Any]] | None = None,
        *,
        tenure: int | None = None,
    ) -> int:
        """See `Lifecycle.checkpoint`."""
        steps = self.flows.checkpoint(session_id, snapshot, messages, self.store, tenure)
        return await self._to_the_end(self.pool.do(steps))

    async def restore(
        self, session_id: str, owner: str, *, make_room: bool = False, approval_pending: bool = False
    ) -> Restored:
        """See `Lifecycle.restore`."""
        room = self._make_room if validate.flag('make_room', make_room) else None
        pending = validate.flag('approval_pending', approval_pending)
        return await self._to_the_end(self.pool.do(self.flows.restore(session_id, owner, self.store, room, pending)))

    async def notices(
        self, owner: str, *, after: str = '0', block_s: float | None = None
    ) -> AsyncGenerator[Notice, None]:
        """See `Lifecycle.notices`; an async iterator."""
        block_ms = self.pool.read_block_ms(validate.wait_ms('block_s', block_s))
        while True:
            batch, last = await self.pool.run(self.index.read_notices(owner, after, NOTICE_BATCH, block_ms))
            for notice in batch:
                yield notice
            if last is not None:
                after = last
            elif block_ms is None:
                return

    async def serve_notices(
        self,
        owner: str,
        *,
        snapshot: Callable[[str], object],
        on_notice: Callable[[Notice], object] | None = None,
    ) -> AsyncRepeater:
        """See `Lifecycle.serve_notices`: an asyncio task; `snapshot` and `on_notice` may be coroutine functions
        (awaited) or plain ones (run in a worker thread, so a slow snapshot never blocks the event loop)."""
        owner = validate.identifier('owner', owner)
        position = [await self.pool.run(self.index.last_notice_id(owner))]
        wait_ms = self.pool.read_block_ms(SERVE_WAIT_MS)

        async def serve() -> None:
            await self.pool.do(self.flows.serve(owner, position, wait_ms, snapshot, on_notice, self.store))

        return AsyncRepeater(f'notices-{owner}', 0, serve, retry_s=1).start()

    async def stats(self) -> PoolStats:
        """See `Lifecycle.stats`."""
        return await self.pool.run(self.index.stats(await self.pool.now_ms()))

    async def heartbeat(self, owner: str) -> None:
        """See `Lifecycle.heartbeat`."""
        await self.pool.run(self.index.heartbeat(owner, await self.pool.now_ms()))

    async def start_heartbeat(self, owner: str) -> AsyncRepeater:
        """Heartbeat now, then every third of `replica_ttl_s` from a task; `await stop()` it on shutdown."""
        await self.heartbeat(owner)
        await self.pool.do(self.flows.announce(owner, self.store))
        interval_s = self.settings.replica_ttl_s / 3
        return AsyncRepeater(f'heartbeat-{owner}', interval_s, lambda: self.heartbeat(owner)).start()
