"""How to reach Redis: one server by URL, the master of a Sentinel group, or a Redis Cluster.

One place builds every Redis client lifecycle uses (the executors' pools, and with them the sweep locks) and
tells Celery's broker and RedBeat the same topology, so a failover moves the pool, the locks, the schedule and
the queue together. With Sentinel, `redis_url` still gives what the data nodes need (credentials, database,
TLS); its host is not used.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import hiredis
import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel as sentinel
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import DataError, RedisClusterException

from lifecycle.errors import BackendUnavailable
from lifecycle.settings import Settings, redacted


class _BlockingSentinelPool(sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """The current master's connections, in a pool whose callers wait (bounded) when it is exhausted, as the
    executors' plain pool does, instead of failing at once."""


class _AsyncBlockingSentinelPool(asentinel.SentinelConnectionPool, aredis.BlockingConnectionPool):
    """`_BlockingSentinelPool` for asyncio."""


SENT_AS_IS = frozenset({str, bytes, int, float})  # what hiredis packs exactly as redis-py would


class CommandPacker:
    """redis-py's hiredis packer without its per-argument pass in Python: redis-py copies every argument to turn
    a bytearray or memoryview into bytes (a third of `touch_many`'s time for 1,000 ids). Here the argument types
    are checked in C, and only a command holding another type is copied as redis-py copies it."""

    def pack(self, *args: Any) -> list[bytes]:
        first = args[0]
        if (' ' if isinstance(first, str) else b' ') in first:  # 'CONFIG SET': redis-py names two words in one
            args = (*first.split(), *args[1:])
        if not SENT_AS_IS.issuperset(map(type, args)):  # a memoryview may be strided: hiredis reads its raw buffer
            args = tuple(bytes(arg) if isinstance(arg, (bytearray, memoryview)) else arg for arg in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(exc) from exc


# Where hiredis can pack (2.1 and later); otherwise redis-py packs as it would.
PACKING: dict[str, Any] = {'command_packer': CommandPacker()} if hasattr(hiredis, 'pack_command') else {}


def _data_node_options(settings: Settings) -> dict[str, Any]:
    """What `redis_url` says about the data nodes (credentials, database, TLS), without its address."""
    options: dict[str, Any] = redis.connection.parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    for address in ('host', 'port', 'path'):
        options.pop(address, None)
    if settings.redis_url.startswith('rediss://'):
        options.pop('connection_class', None)
        options['ssl'] = True  # the sentinel pool picks its TLS connection class from this
    return options


def _sentinel_options(settings: Settings) -> dict[str, Any]:
    password = settings.redis_sentinel_password
    return {'password': password.get_secret_value()} if password is not None else {}


def connect(settings: Settings, **options: Any) -> redis.Redis:
    """A client of the pool's Redis (its master, with Sentinel; any node's cluster client, with a Cluster);
    it owns its connection pool, so closing it closes its connections."""
    if settings.redis_cluster:
        # Each node's pool waits (bounded) for a connection when exhausted, as the plain one does.
        cluster_options = {**options, 'connection_pool_class': redis.BlockingConnectionPool}
        try:  # it asks a node for the cluster's layout now
            return RedisCluster.from_url(settings.redis_url, **cluster_options)  # type: ignore[return-value]
        except (redis.RedisError, RedisClusterException) as exc:
            raise BackendUnavailable(f'Redis Cluster at {redacted(settings.redis_url)} is unavailable: {exc}') from exc
    if settings.redis_sentinels:
        group = sentinel.Sentinel(settings.sentinel_addresses, sentinel_kwargs=_sentinel_options(settings))  # type: ignore[no-untyped-call]
        return group.master_for(  # type: ignore[no-any-return, no-untyped-call]
            settings.redis_sentinel_master, connection_pool_class=_BlockingSentinelPool,
            **_data_node_options(settings), **PACKING, **options,
        )  # fmt: skip
    return redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(settings.redis_url, **PACKING, **options))


def connect_async(settings: Settings, **options: Any) -> aredis.Redis:
    """`connect` for asyncio."""
    if settings.redis_cluster:
        cluster_options = {k: v for k, v in options.items() if k != 'timeout'}
        return AsyncRedisCluster.from_url(settings.redis_url, **cluster_options)  # type: ignore[return-value]
    if settings.redis_sentinels:
        group = asentinel.Sentinel(settings.sentinel_addresses, sentinel_kwargs=_sentinel_options(settings))  # type: ignore[no-untyped-call]
        return group.master_for(  # type: ignore[no-any-return]
            settings.redis_sentinel_master, connection_pool_class=_AsyncBlockingSentinelPool,
            **_data_node_options(settings), **options,
        )  # fmt: skip
    return aredis.Redis.from_pool(aredis.BlockingConnectionPool.from_url(settings.redis_url, **options))


def _tls(node: dict[str, Any]) -> dict[str, Any]:
    """The TLS options of the data nodes, as Celery (`broker_use_ssl`) and RedBeat take them: never empty (kombu
    takes an empty dict for no TLS at all), so certificates are required unless the URL says otherwise."""
    return {'ssl_cert_reqs': 'required', **{name: value for name, value in node.items() if name.startswith('ssl_')}}


def celery_broker(settings: Settings) -> dict[str, Any]:
    """Celery's broker settings: `broker_url` when set (RabbitMQ, or a Redis of its own); else the pool's Redis,
    through the same sentinels when there are some (kombu follows a failover to the new master)."""
    if settings.broker_url is not None:
        return {'broker_url': settings.broker_url}
    if not settings.redis_sentinels:
        return {'broker_url': settings.redis_url}
    node = _data_node_options(settings)
    credentials = ''
    if node.get('password') is not None or node.get('username') is not None:
        credentials = f'{quote(node.get("username") or "", safe="")}:{quote(node.get("password") or "", safe="")}@'
    db = node.get('db', 0)
    hosts = [(f'[{host}]' if ':' in host else host, port) for host, port in settings.sentinel_addresses]  # IPv6
    url = ';'.join(f'sentinel://{credentials}{host}:{port}/{db}' for host, port in hosts)
    options: dict[str, Any] = {'master_name': settings.redis_sentinel_master}
    if settings.redis_sentinel_password is not None:
        options['sentinel_kwargs'] = _sentinel_options(settings)
    config = {'broker_url': url, 'broker_transport_options': options}
    if node.get('ssl'):
        config['broker_use_ssl'] = _tls(node)
    return config


def redbeat_config(settings: Settings) -> dict[str, Any]:
    """RedBeat's settings: its own Redis (`beat_redis_url`), or the pool's, through the sentinels when there
    are some (RedBeat finds the master itself and follows a failover)."""
    if settings.beat_redis_url is not None:
        return {'redbeat_redis_url': settings.beat_redis_url}
    if not settings.redis_sentinels:
        return {'redbeat_redis_url': settings.redis_url}
    node = _data_node_options(settings)
    options: dict[str, Any] = {
        'sentinels': settings.sentinel_addresses,
        'service_name': settings.redis_sentinel_master,
        'db': node.get('db', 0),
        'password': node.get('password'),
        'sentinel_kwargs': _sentinel_options(settings),
    }
    if node.get('username') is not None:
        options['username'] = node['username']
    config: dict[str, Any] = {'redbeat_redis_url': 'redis-sentinel://', 'redbeat_redis_options': options}
    if node.get('ssl'):
        config['redbeat_redis_use_ssl'] = _tls(node)
    return config
