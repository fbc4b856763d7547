"""The executors: the one place that talks to Redis.

An executor owns the connection pool, the scripts, pipelines and the clock, and sends the `Call`s the
index modules build; it is also the single place where redis-py's errors become `LifecycleError`s
(`BackendUnavailable`, `ScriptFailed`). `Executor` is the sync one, `AsyncExecutor` its asyncio twin:
they differ only in how they wait, and both drive the same `Steps` (see `calls`).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
from redis import Redis as SyncRedis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)

from lifecycle.clock import Clock, RedisClock
from lifecycle.errors import BackendUnavailable, LifecycleError, ScriptFailed
from lifecycle.pool import servers
from lifecycle.pool.calls import NOW, Call, Durable, Step, Steps
from lifecycle.pool.keys import Keys
from lifecycle.pool.scripts import SOURCES
from lifecycle.settings import Settings, redacted
from lifecycle.steps import Done, advance

T = TypeVar('T')
# A member no valid id could be (a hand edit, a foreign writer) decodes without raising: one bad entry never
# stops a read. It must never be sent back as it came (hiredis encodes strictly): what sends a member back
# sends it as bytes (`calls.as_read`).
ENCODING_ERRORS = 'surrogateescape'
DEFAULT_SOCKET_TIMEOUT_S = 5  # redis-py 8's, when a client is not given one
# A Redis Cluster that lost a slot's master answers CLUSTERDOWN; one none of whose nodes answers raises
# RedisClusterException (no RedisError), as do client-side mistakes: only the first is an outage.
# Unreachable, or reachable but not taking writes now (a failover: a demoted master's READONLY, a replica's
# MASTERDOWN, a cluster slot moving): nothing was written, and a retry is right.
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, ClusterDownError, ReadOnlyError, MasterDownError,
                     MovedError, TryAgainError)  # fmt: skip
REDIS_ERRORS = (redis.RedisError, RedisClusterException)


def pool_options(settings: Settings) -> dict[str, Any]:
    """The connection pool both executors build: calls beyond its size wait for a connection (bounded), never
    fail at once as redis-py's default pool does ('Too many connections')."""
    return {
        'max_connections': settings.redis_max_connections,
        'timeout': settings.redis_pool_timeout_s,
        'decode_responses': True,
        'encoding_errors': ENCODING_ERRORS,
    }


def sync_twin(client: AsyncRedis, settings: Settings) -> SyncRedis:
    """A sync client of the server an asyncio client talks to, with its connection settings (address, db,
    credentials, TLS, timeouts): for the few sync paths of the async client (make_room's evictor). A cluster
    client, or a Sentinel group's, gets the sync client the settings describe (its nodes are found again)."""
    clustered: Any = client  # the executor's type is the plain client's; an injected one may be a cluster's
    if isinstance(clustered, AsyncRedisCluster):
        return _sync_cluster(clustered)
    pool = client.connection_pool
    if isinstance(pool, asentinel.SentinelConnectionPool):
        return servers.connect(settings, **pool_options(settings))
    kind = getattr(redis.connection, pool.connection_class.__name__, redis.connection.Connection)
    accepted = {name for cls in kind.__mro__ if '__init__' in cls.__dict__
                for name in inspect.signature(cls.__dict__['__init__']).parameters}  # fmt: skip
    kwargs = {name: value for name, value in pool.connection_kwargs.items()
              if name in accepted and not name.startswith('maint_notifications')
              and 'asyncio' not in type(value).__module__}  # fmt: skip
    pool_of_twin = redis.BlockingConnectionPool(connection_class=kind, **kwargs)  # type: ignore[no-untyped-call]
    return SyncRedis.from_pool(pool_of_twin)  # it owns the pool: closing it closes the connections


_CLUSTER_OPTIONS = ('username', 'password', 'socket_timeout', 'socket_connect_timeout', 'encoding', 'encoding_errors',
                    'decode_responses', 'max_connections')  # fmt: skip


def _sync_cluster(client: AsyncRedisCluster) -> SyncRedis:
    """A sync client of the Redis Cluster an asyncio cluster client talks to, found from the same nodes."""
    options = client.nodes_manager.connection_kwargs
    kwargs = {k: v for k, v in options.items() if k in _CLUSTER_OPTIONS or k.startswith('ssl_')}
    if 'SSL' in getattr(options.get('connection_class'), '__name__', ''):
        kwargs['ssl'] = True
    nodes = [ClusterNode(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()]  # type: ignore[no-untyped-call]
    cluster: Any = RedisCluster(startup_nodes=nodes, **kwargs)
    return cluster  # type: ignore[no-any-return]


def server_of(client: Any, url: str) -> str:
    """The server errors name: the one `client` talks to (an injected client is not built from `url`), the master a
    Sentinel names, or `url` for a cluster (any node)."""
    pool = getattr(client, 'connection_pool', None)
    if pool is None:
        return url
    if getattr(pool, 'service_name', None) is not None:
        return f'the master {pool.service_name!r} of the sentinels'
    options = pool.connection_kwargs
    if options.get('path'):
        return f'unix://{options["path"]}'
    scheme = 'rediss' if 'ssl' in pool.connection_class.__name__.lower() else 'redis'
    user = options.get('username') or ''
    auth = f'{user}:***@' if options.get('password') else f'{user}@' if user else ''  # never the password itself
    return f'{scheme}://{auth}{options.get("host", "localhost")}:{options.get("port", 6379)}/{options.get("db", 0)}'


def unavailable(url: str, exc: Exception) -> BackendUnavailable:
    """The error for a Redis that could not be reached, naming the server (never its password)."""
    return BackendUnavailable(f'Redis at {redacted(url)} is unavailable: {exc}')


def not_taking_writes(exc: object) -> bool:
    """Unreachable, or not taking writes now: CONNECTION_ERRORS, and a master cut off from its replicas under
    `min-replicas-to-write` (NOREPLICAS, which redis-py has no class for)."""
    return isinstance(exc, CONNECTION_ERRORS) or (isinstance(exc, redis.ResponseError) and 'NOREPLICAS' in str(exc))


def translate(url: str, call: Call[Any] | None, exc: Exception) -> LifecycleError:
    """redis-py's error as a LifecycleError: unreachable (BackendUnavailable), or refused (ScriptFailed)."""
    if not_taking_writes(exc) or (isinstance(exc, RedisClusterException) and 'connect' in str(exc)):
        return unavailable(url, exc)
    return ScriptFailed(f'Redis refused {call.name if call is not None else "a command"}: {exc}')


def parse_reply(call: Call[T], reply: Any) -> T:
    """`call.parse(reply)`; a reply it cannot read (a state no script expects) becomes ScriptFailed."""
    try:
        return call.parse(reply)
    except LifecycleError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ScriptFailed(f'unexpected reply of {call.name!r}: {reply!r} ({exc})') from exc


def each_result(url: str, call: Call[T], reply: Any) -> T | LifecycleError:
    """One call's result in a pipeline: its value, or the LifecycleError it ended with."""
    if not_taking_writes(reply):
        raise unavailable(url, reply) from reply
    if isinstance(reply, Exception):
        return translate(url, call, reply)
    try:
        return parse_reply(call, reply)
    except LifecycleError as exc:
        return exc


def first_error(results: list[T | LifecycleError]) -> list[T]:
    """`results` if none is an error; else raises the first."""
    for result in results:
        if isinstance(result, LifecycleError):
            raise result
    return results  # type: ignore[return-value]  # no LifecycleError is left in it


def read_block_ms(client: Any, block_ms: int | None) -> int | None:
    """How long one blocking read may wait: `block_ms`, but less than the connections' socket timeout (5 s
    by default in redis-py 8), which would otherwise end a quiet wait as an error."""
    if block_ms is None:
        return None
    pool = getattr(client, 'connection_pool', None)  # a cluster client has none: its nodes' options are these
    options = pool.connection_kwargs if pool is not None else getattr(client.nodes_manager, 'connection_kwargs', {})
    timeout_s = options.get('socket_timeout', DEFAULT_SOCKET_TIMEOUT_S)
    return block_ms if timeout_s is None else max(1, min(block_ms, int(timeout_s * 800)))


class _Base:
    """What both executors hold: settings, key names, the clock, the scripts' SHAs."""

    redis: Any

    def __init__(self, settings: Settings, clock: Clock | None) -> None:
        self.settings = settings
        self.keys = Keys.for_prefix(settings.key_prefix)
        self.clock = clock or RedisClock(settings.clock_refresh_s)
        self.url = server_of(self.redis, settings.redis_url)
        # redis-py refuses scripts in a cluster pipeline: on a Redis Cluster a batch goes call by call.
        self.clustered = isinstance(self.redis, (RedisCluster, AsyncRedisCluster))
        self._scripts = {name: self.redis.register_script(source) for name, source in SOURCES.items()}

    def _command(self, call: Call[Any]) -> Sequence[Any]:
        if call.script is None:
            return call.command
        # EVALSHA straight through execute_command: redis-py's Script.__call__ costs ~5 µs more a call.
        return ('EVALSHA', self._scripts[call.script].sha, len(call.keys), *call.keys, *call.args)

    def _queue(self, pipe: Any, calls: Sequence[Call[Any]]) -> None:
        """Queue `calls` on a sync pipeline: redis-py's Script objects load what the server lacks first."""
        for call in calls:
            if call.script is not None:
                self._scripts[call.script](keys=call.keys, args=call.args, client=pipe)
            else:
                pipe.execute_command(*call.command)

    def _results(self, calls: Sequence[Call[T]], replies: Sequence[Any]) -> list[T | LifecycleError]:
        results: list[T | LifecycleError] = []
        for call, reply in zip(calls, replies, strict=True):
            result: T | LifecycleError = each_result(self.url, call, reply)
            results.append(result)
        return results

    def read_block_ms(self, block_ms: int | None) -> int | None:
        return read_block_ms(self.redis, block_ms)


class Executor(_Base):
    """Sends calls to Redis for one process; thread-safe (redis-py pools its connections)."""

    redis: SyncRedis

    def __init__(self, settings: Settings, redis_client: SyncRedis | None = None, clock: Clock | None = None) -> None:
        # from_pool: the executor owns the pool, so close() closes its connections too.
        self.redis = redis_client or servers.connect(settings, **pool_options(settings))
        super().__init__(settings, clock)

    def close(self) -> None:
        self.redis.close()

    @contextmanager
    def translating(self, call: Call[Any] | None = None) -> Iterator[None]:
        """Turn redis-py errors raised in the block (a lock, a raw client) into LifecycleErrors."""
        try:
            yield
        except REDIS_ERRORS as exc:
            raise translate(self.url, call, exc) from exc

    def now_ms(self) -> int:
        """Lifecycle time (Redis server time with a `RedisClock`), in epoch milliseconds."""
        clock = self.clock
        if not isinstance(clock, RedisClock):
            return clock.now_ms()
        fresh = clock.fresh_ms()
        if fresh is not None:
            return fresh
        with self.translating():
            sent_ns = time.monotonic_ns()
            clock.observe(self.redis.time(**self._at_pool()), sent_ns, time.monotonic_ns())
        return clock.now_ms()

    def server_ms(self) -> int:
        """Redis's own clock (TIME), in epoch milliseconds, whatever clock this executor was given."""
        with self.translating():
            seconds, micros = self.redis.time(**self._at_pool())
        return int(seconds) * 1000 + int(micros) // 1000

    def _at_pool(self) -> dict[str, Any]:
        """Where a keyless command goes: on a Redis Cluster, the node of the pool's hash tag (every process then
        reads lifecycle time from the same clock), not redis-py's default node."""
        if not self.clustered:
            return {}
        cluster: Any = self.redis
        return {'target_nodes': cluster.get_node_from_key(self.keys.prefix)}

    def run(self, call: Call[T]) -> T:
        """Send one call and read its reply."""
        try:  # a plain try, not `translating`: this is every call's hot path
            reply = self._send(call)
        except REDIS_ERRORS as exc:
            raise translate(self.url, call, exc) from exc
        return parse_reply(call, reply)

    def _send(self, call: Call[Any]) -> Any:
        try:
            return self.redis.execute_command(*self._command(call))  # type: ignore[no-untyped-call]
        except NoScriptError:  # a restarted or flushed server: load the script once, then go on
            self.redis.script_load(SOURCES[call.script])  # type: ignore[index]
            return self.redis.execute_command(*self._command(call))  # type: ignore[no-untyped-call]

    def run_many(self, calls: Sequence[Call[T]]) -> list[T]:
        """Send many calls in one pipelined round trip (each script is atomic; the batch is not); the first
        call that failed raises, after every reply was read (see `run_each`)."""
        return first_error(self.run_each(calls))

    def run_each(self, calls: Sequence[Call[T]]) -> list[T | LifecycleError]:
        """Send many calls in one pipelined round trip; each call's result, or the LifecycleError it ended
        with (a refusal, ScriptFailed), so one bad session never hides what the others did.

        A call answered NOSCRIPT (the server lost its scripts after redis-py checked them) never ran: it
        is sent again once. A Redis that cannot be reached raises BackendUnavailable for the whole batch.
        """
        replies = self._pipeline(calls)
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        for i, reply in zip(lost, self._pipeline([calls[i] for i in lost]) if lost else [], strict=True):
            replies[i] = reply
        return self._results(calls, replies)

    def _pipeline(self, calls: Sequence[Call[Any]]) -> list[Any]:
        if not calls:
            return []
        if self.clustered:
            return self._call_by_call(calls)
        with self.translating():
            pipe = self.redis.pipeline(transaction=False)
            self._queue(pipe, calls)
            return pipe.execute(raise_on_error=False)

    def _call_by_call(self, calls: Sequence[Call[Any]]) -> list[Any]:
        """A batch on a Redis Cluster: each call's reply or the redis-py error it ended with, as a pipeline
        answers; once the node is unreachable, the rest end with the same error (each would wait it out again)."""
        replies: list[Any] = []
        for call in calls:
            if replies and not_taking_writes(replies[-1]):
                replies.append(replies[-1])
                continue
            try:
                replies.append(self._send(call))
            except REDIS_ERRORS as exc:
                replies.append(exc)
        return replies

    def do(self, steps: Steps[T]) -> T:
        """Drive an operation written as steps: each Call is run, NOW answered, each Durable called."""
        step: Step | Done[T] = advance(steps)
        while not isinstance(step, Done):
            try:
                result = self.now_ms() if step is NOW else self._one(step)
            except BaseException as exc:  # the operation's own handlers and cleanups see it first
                step = advance(steps, error=exc)
            else:
                step = advance(steps, result)
        return step.value

    def _one(self, step: Step) -> Any:
        return step.fn(*step.args) if isinstance(step, Durable) else self.run(step)  # type: ignore[arg-type]

    def _scan(self, call: Call[T]) -> T:
        """A page of a scan. On a Redis Cluster, a SCAN (it names no key) goes to the node of the pool's hash tag,
        where every key of the pool is: redis-py would scan every node, and answer each node's cursor."""
        cluster: Any = self.redis  # a RedisCluster, when it is one (the executor's type is the plain client's)
        if not isinstance(cluster, RedisCluster) or call.command[:1] != ('SCAN',):
            return self.run(call)
        with self.translating(call):
            owner: Any = cluster.get_node_from_key(self.keys.prefix)  # type: ignore[no-untyped-call]
            reply = cluster.get_redis_connection(owner).execute_command(*call.command)  # type: ignore[no-untyped-call]
        return parse_reply(call, reply)

    def pages(self, page: Callable[[int], Call[tuple[int, list[str]]]]) -> Iterator[list[str]]:
        """Every page of a cursor scan: `page(cursor)` builds one ZSCAN/HSCAN/SCAN call (see `calls`)."""
        cursor = 0
        while True:
            cursor, items = self._scan(page(cursor))
            if items:
                yield items
            if cursor == 0:
                return


class AsyncExecutor(_Base):
    """`Executor` for asyncio: the same calls, awaited."""

    redis: AsyncRedis

    def __init__(
        self, settings: Settings, redis_client: aredis.Redis | None = None, clock: Clock | None = None
    ) -> None:
        self.redis = redis_client or servers.connect_async(settings, **pool_options(settings))
        super().__init__(settings, clock)

    async def close(self) -> None:
        await self.redis.aclose()

    async def now_ms(self) -> int:
        clock = self.clock
        if not isinstance(clock, RedisClock):
            return clock.now_ms()
        fresh = clock.fresh_ms()
        if fresh is not None:
            return fresh
        try:
            sent_ns = time.monotonic_ns()
            clock.observe(await self.redis.time(), sent_ns, time.monotonic_ns())
        except REDIS_ERRORS as exc:
            raise translate(self.url, None, exc) from exc
        return clock.now_ms()

    async def run(self, call: Call[T]) -> T:
        try:
            reply = await self._send(call)
        except REDIS_ERRORS as exc:
            raise translate(self.url, call, exc) from exc
        return parse_reply(call, reply)

    async def _send(self, call: Call[Any]) -> Any:
        try:
            return await self.redis.execute_command(*self._command(call))  # type: ignore[no-untyped-call]
        except NoScriptError:
            await self.redis.script_load(SOURCES[call.script])  # type: ignore[index]
            return await self.redis.execute_command(*self._command(call))  # type: ignore[no-untyped-call]

    async def run_many(self, calls: Sequence[Call[T]]) -> list[T]:
        return first_error(await self.run_each(calls))

    async def run_each(self, calls: Sequence[Call[T]]) -> list[T | LifecycleError]:
        """See `Executor.run_each`: scripts go as EVALSHA; those the server lacked are loaded, then sent again."""
        replies = await self._pipeline(calls)
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if lost:
            try:
                for name in {calls[i].script for i in lost}:
                    await self.redis.script_load(SOURCES[name])  # type: ignore[index]
            except REDIS_ERRORS as exc:
                raise translate(self.url, None, exc) from exc
            for i, reply in zip(lost, await self._pipeline([calls[i] for i in lost]), strict=True):
                replies[i] = reply
        return self._results(calls, replies)

    async def _pipeline(self, calls: Sequence[Call[Any]]) -> list[Any]:
        if not calls:
            return []
        if self.clustered:  # see Executor._call_by_call
            replies: list[Any] = []
            for call in calls:
                if replies and not_taking_writes(replies[-1]):
                    replies.append(replies[-1])
                    continue
                try:
                    replies.append(await self._send(call))
                except REDIS_ERRORS as exc:
                    replies.append(exc)
            return replies
        try:
            pipe = self.redis.pipeline(transaction=False)
            for call in calls:
                pipe.execute_command(*self._command(call))
            return await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            raise translate(self.url, None, exc) from exc

    async def do(self, steps: Steps[T]) -> T:
        """See `Executor.do`; a Durable step runs in a worker thread unless it is a coroutine function."""
        step: Step | Done[T] = advance(steps)
        while not isinstance(step, Done):
            try:
                result = await self.now_ms() if step is NOW else await self._one(step)
            except BaseException as exc:  # the operation's own handlers and cleanups see it first
                step = advance(steps, error=exc)
            else:
                step = advance(steps, result)
        return step.value

    async def _one(self, step: Step) -> Any:
        if not isinstance(step, Durable):
            return await self.run(step)  # type: ignore[arg-type]
        if inspect.iscoroutinefunction(step.fn):
            return await step.fn(*step.args)
        # The app's callbacks run on the event loop, as it wrote them; a blocking store call in a worker thread.
        result = step.fn(*step.args) if step.inline else await asyncio.to_thread(step.fn, *step.args)
        return await result if inspect.isawaitable(result) else result  # a plain function that returned one
