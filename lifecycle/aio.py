"""AsyncLifecycle: the asyncio twin of `Lifecycle`, on the same calls and the same scripts."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import cached_property
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
from redis.exceptions import NoScriptError

from lifecycle import validate
from lifecycle.background import AsyncRepeater
from lifecycle.client import (
    NOTICE_BATCH,
    SERVE_WAIT_MS,
    Lifecycle,
    Turn,
    checkpoint_args,
    failed,
    new_token,
    parse_reply,
    pool_options,
    read_block_ms,
    refusal_counter,
    unavailable,
    unavailable_as_error,
)
from lifecycle.clock import Clock, RedisClock
from lifecycle.errors import BackendUnavailable, CapacityExceeded, LifecycleError
from lifecycle.jobs import worktrees
from lifecycle.jobs.runs import AsyncRuns
from lifecycle.models import Notice, NoticeKind, PoolStats, Reservation, Restored, SessionInfo
from lifecycle.pool.scripts import SOURCES
from lifecycle.pool.sessions import Call, SessionIndex
from lifecycle.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar('T')


async def maybe_awaited(value: object) -> object:
    """`value`, awaited if the app's callback was a coroutine function."""
    return await value if inspect.isawaitable(value) else value


class AsyncLifecycle:
    """The session pool for asyncio API replicas; every method mirrors `Lifecycle`'s."""

    def __init__(
        self, settings: Settings | None = None, *, redis_client: aredis.Redis | None = None, clock: Clock | None = None
    ) -> None:
        self.settings = settings or Settings()
        # from_pool: the client owns the pool, so disconnect() closes its connections too.
        self.redis = redis_client or aredis.Redis.from_pool(
            aredis.BlockingConnectionPool.from_url(self.settings.redis_url, **pool_options(self.settings))
        )
        self.index = SessionIndex(self.settings)
        self.clock = clock or RedisClock(self.settings.clock_refresh_s)
        self._scripts = {name: self.redis.register_script(source) for name, source in SOURCES.items()}
        self._pending: set[asyncio.Task[Any]] = set()
        self._durable: Lifecycle | None = None

    @classmethod
    def from_env(cls) -> AsyncLifecycle:
        """A client configured from LIFECYCLE_* environment variables."""
        return cls(Settings())

    async def __aenter__(self) -> AsyncLifecycle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def disconnect(self) -> None:
        """Close the Redis (and MongoDB) connections."""
        await self.redis.aclose()
        if self._durable is not None:
            self._durable.disconnect()

    async def now_ms(self) -> int:
        """Lifecycle time (Redis server time with a `RedisClock`), in epoch milliseconds."""
        clock = self.clock
        if isinstance(clock, RedisClock) and clock.needs_sync():
            with unavailable_as_error(self.settings.redis_url):
                sent_ns = time.monotonic_ns()
                server_time = await self.redis.time()
                clock.observe(server_time, sent_ns, time.monotonic_ns())
        return clock.now_ms()

    async def run(self, call: Call[T]) -> T:
        """Send one call to Redis and read its reply."""
        try:
            reply: Any
            if call.script is not None:
                # EVALSHA straight through execute_command: redis-py's Script.__call__ costs ~5 µs more a call.
                script = self._scripts[call.script]
                command = ('EVALSHA', script.sha, len(call.keys), *call.keys, *call.args)
                try:
                    reply = await self.redis.execute_command(*command)  # type: ignore[no-untyped-call]
                except NoScriptError:  # a restarted or flushed server: load the script once, then go on
                    await self.redis.script_load(script.script)
                    reply = await self.redis.execute_command(*command)  # type: ignore[no-untyped-call]
            else:
                reply = await self.redis.execute_command(*call.command)  # type: ignore[no-untyped-call]  # untyped in redis-py
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise unavailable(self.settings.redis_url, exc) from exc
        except redis.RedisError as exc:
            raise failed(call, exc) from exc
        return parse_reply(call, reply)

    @property
    def durable(self) -> Lifecycle:
        """A sync client for the calls that touch MongoDB (run in a worker thread: pymongo is sync)."""
        if self._durable is None:
            self._durable = Lifecycle(self.settings)
        return self._durable

    @cached_property
    def runs(self) -> AsyncRuns:
        """See `Lifecycle.runs`."""
        return AsyncRuns(self)

    async def register_worktree(self, session_id: str, path: str | os.PathLike[str]) -> str:
        """See `Lifecycle.register_worktree`."""
        normal, session_id = worktrees.registration(session_id, path, self.settings.worktree_root)
        await self.run(Call(lambda reply: None, command=('HSET', self.index.keys.worktrees, normal, session_id)))
        return normal

    async def reserve(
        self, owner: str, tenant: str | None = None, *, token: str | None = None, make_room: bool = False
    ) -> Reservation:
        """See `Lifecycle.reserve`."""
        token = new_token() if token is None else token
        make_room = validate.flag('make_room', make_room)
        if make_room:
            return await asyncio.to_thread(self.durable.reserve, owner, tenant, token=token, make_room=True)
        try:
            return await self.run(self.index.reserve(owner, tenant, token, await self.now_ms()))
        except CapacityExceeded as full:
            with contextlib.suppress(redis.RedisError):  # a refusal that is not counted is still a refusal
                await self.redis.hincrby(self.index.keys.counters, refusal_counter(full), 1)
            raise

    async def activate(
        self, reservation: Reservation, session_id: str, ttl_seconds: int | None = None, profile: str | None = None
    ) -> SessionInfo:
        """See `Lifecycle.activate`."""
        return await self.run(self.index.activate(reservation, session_id, ttl_seconds, profile, await self.now_ms()))

    async def release(self, reservation: Reservation) -> bool:
        """See `Lifecycle.release`."""
        return await self.run(self.index.release(reservation))

    async def touch(self, session_id: str) -> bool:
        """See `Lifecycle.touch`."""
        return await self.run(self.index.touch([session_id], await self.now_ms())) == 1

    async def touch_many(self, session_ids: Sequence[str]) -> int:
        """See `Lifecycle.touch_many`."""
        return await self.run(self.index.touch(session_ids, await self.now_ms()))

    @asynccontextmanager
    async def turn(self, session_id: str) -> AsyncIterator[Turn]:
        """See `Lifecycle.turn`; the heartbeat is an asyncio task.

        If the body is cancelled (a shutdown), the end of the turn is still recorded, shielded from the
        cancellation, and the cancellation propagates.
        """
        token = new_token()
        turn = Turn(session_id, await self.run(self.index.begin_turn(session_id, token, await self.now_ms())))

        async def renew() -> None:
            if await self.run(self.index.renew_turn(session_id, token, await self.now_ms())) != 1:
                turn.lease_lapsed = True
                log.warning('turn on %s: busy lease had lapsed or the session left the pool', session_id)

        heartbeat = AsyncRepeater(f'turn-{session_id}', self.settings.busy_lease_s / 3, renew).start()
        body_failed = False
        try:
            yield turn
        except BaseException:
            body_failed = True
            raise
        finally:
            await asyncio.shield(heartbeat.stop())
            end = asyncio.ensure_future(self._end_turn(session_id, token))
            self._pending.add(end)
            end.add_done_callback(self._pending.discard)
            try:
                turn.finished_seq = await asyncio.shield(end)
            except BackendUnavailable:
                if not body_failed:
                    raise
                log.warning('turn on %s: could not record its end; the busy lease will lapse', session_id)

    async def _end_turn(self, session_id: str, token: str) -> int | None:
        return await self.run(self.index.end_turn(session_id, token, await self.now_ms()))

    async def close(self, session_id: str) -> bool:
        """See `Lifecycle.close`."""
        if self.settings.mongo_url is not None:
            return await asyncio.to_thread(self.durable.close, session_id)
        return await self.run(self.index.close(session_id)) is not None

    async def status(self, session_id: str) -> SessionInfo | None:
        """See `Lifecycle.status`."""
        info = await self.run(self.index.status(session_id, await self.now_ms()))
        if info is None and self.settings.mongo_url is not None:
            return await asyncio.to_thread(self.durable.status, session_id)
        return info

    async def checkpoint(
        self, session_id: str, snapshot: Mapping[str, Any], messages: Sequence[Mapping[str, Any]] | None = None
    ) -> int:
        """See `Lifecycle.checkpoint`."""
        return await asyncio.to_thread(self.durable.checkpoint, session_id, snapshot, messages)

    async def restore(self, session_id: str, owner: str, *, make_room: bool = False) -> Restored:
        """See `Lifecycle.restore`."""
        return await asyncio.to_thread(self.durable.restore, session_id, owner, make_room=make_room)

    async def notices(
        self, owner: str, *, after: str = '0', block_s: float | None = None
    ) -> AsyncGenerator[Notice, None]:
        """See `Lifecycle.notices`; an async iterator."""
        block_ms = read_block_ms(self.redis, validate.wait_ms('block_s', block_s))
        while True:
            batch = await self.run(self.index.read_notices(owner, after, NOTICE_BATCH, block_ms))
            for notice in batch:
                yield notice
            if batch:
                after = batch[-1].id
            elif block_ms is None:
                return

    async def serve_notices(
        self,
        owner: str,
        *,
        snapshot: Callable[[str], object],
        on_notice: Callable[[Notice], object] | None = None,
    ) -> AsyncRepeater:
        """See `Lifecycle.serve_notices`: an asyncio task; `snapshot` and `on_notice` may be coroutines."""
        owner = validate.identifier('owner', owner)
        position = [await self.run(self.index.last_notice_id(owner))]

        async def serve() -> None:
            try:
                wait_ms = read_block_ms(self.redis, SERVE_WAIT_MS)
                batch = await self.run(self.index.read_notices(owner, position[0], NOTICE_BATCH, wait_ms))
            except BackendUnavailable as exc:
                log.warning('notices of %s: %s; retrying in 1 s', owner, exc)
                await asyncio.sleep(1)
                return
            for notice in batch:
                position[0] = notice.id
                await self._answer(notice, snapshot, on_notice)

        return AsyncRepeater(f'notices-{owner}', 0, serve).start()

    async def _answer(
        self, notice: Notice, snapshot: Callable[[str], object], on_notice: Callable[[Notice], object] | None
    ) -> None:
        try:
            if notice.kind is NoticeKind.CHECKPOINT_REQUESTED:
                args = checkpoint_args(notice.session_id, await maybe_awaited(snapshot(notice.session_id)))
                if args is not None:
                    await self.checkpoint(notice.session_id, *args)
            if on_notice is not None:
                await maybe_awaited(on_notice(notice))
        except LifecycleError as exc:
            log.info('notice %s of %s not answered: %s', notice.kind, notice.session_id, exc)
        except Exception:
            log.exception("notice %s of %s: the app's callback failed", notice.kind, notice.session_id)

    async def stats(self) -> PoolStats:
        """See `Lifecycle.stats`."""
        return await self.run(self.index.stats(await self.now_ms()))

    async def heartbeat(self, owner: str) -> None:
        """See `Lifecycle.heartbeat`."""
        await self.run(self.index.heartbeat(owner, await self.now_ms()))

    async def start_heartbeat(self, owner: str) -> AsyncRepeater:
        """Heartbeat now, then every third of `replica_ttl_s` from a task; `await stop()` it on shutdown."""
        await self.heartbeat(owner)
        interval_s = self.settings.replica_ttl_s / 3
        return AsyncRepeater(f'heartbeat-{owner}', interval_s, lambda: self.heartbeat(owner)).start()
