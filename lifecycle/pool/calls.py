"""Calls: one Redis round trip each, as data; steps: an operation of many calls, as a generator.

Nothing here does I/O. An index module (`sessions`, `claims`, `runs`, ...) builds a `Call` with the
function that reads its reply; an executor (`executor.Executor` or `AsyncExecutor`) sends it. An
operation made of several round trips is written once as a generator of `Step`s (`Call`s, `NOW`, or a
`Durable` store call) and driven by either executor, so the sync and async clients share every rule.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from lifecycle.pool.scripts import ScriptName

T = TypeVar('T')
Arg = str | int | float | bytes  # bytes: a member that is not UTF-8, given back as it came


@dataclass(slots=True)  # not frozen: built on every call, and a frozen init costs a few microseconds
class Call(Generic[T]):
    """One Redis round trip: `script` with `keys`/`args`, or the raw `command`; `parse` reads the reply."""

    parse: Callable[[Any], T]
    script: ScriptName | None = None
    keys: Sequence[str] = ()
    args: Sequence[Arg] = ()
    command: Sequence[Arg] = ()

    @property
    def name(self) -> str:
        """The script or command, for errors and logs."""
        return self.script or (str(self.command[0]) if self.command else 'call')


class Now:
    """The step that asks the executor for lifecycle time (epoch ms)."""


NOW = Now()


@dataclass(frozen=True)
class Durable(Generic[T]):
    """A step that calls the durable store, or one of the app's callbacks: `fn(*args)`.

    The sync executor calls it; the async one awaits it if `fn` is a coroutine function (a native async
    store), calls it on the event loop if `inline` (an app callback), and otherwise runs it in a worker thread
    (a blocking store).
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    inline: bool = False  # an app callback: on the event loop (awaited if it returns an awaitable), no thread


Step = Call[Any] | Now | Durable[Any]
Steps = Generator[Step, Any, T]


def as_int(value: Any) -> int:
    """A Redis integer or score reply (a score may come back as '1.7e12' or 1.7e12)."""
    return int(float(value))


def ignore(reply: Any) -> None:
    return None


def scored(reply: Any) -> list[tuple[str, int]]:
    """A WITHSCORES reply, flat (RESP2 through execute_command) or already paired (RESP3, some clients)."""
    if reply and isinstance(reply[0], list | tuple):
        return [(str(member), as_int(score)) for member, score in reply]
    return [(str(member), as_int(score)) for member, score in zip(reply[::2], reply[1::2], strict=True)]


def as_dict(reply: Any) -> dict[str, str]:
    """An HGETALL reply, flat or already a mapping."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    return {str(k): str(v) for k, v in zip(reply[::2], reply[1::2], strict=True)}


def optional_int(reply: Any) -> int | None:
    return None if reply is None else as_int(reply)


# -- raw commands: the few reads and writes no script needs, each one round trip -------------------------


def exact_scores(reply: Any) -> list[tuple[str, float]]:
    """A WITHSCORES reply with each score as Redis keeps it (a float), for a cursor that must not round."""
    pairs = reply if reply and isinstance(reply[0], list | tuple) else zip(reply[::2], reply[1::2], strict=True)
    return [(str(member), float(score)) for member, score in pairs]


def by_score(key: str, low: Arg, high: Arg, count: int | None = None) -> Call[list[tuple[str, float]]]:
    """(member, exact score) of `key` with scores in [low, high], lowest first; at most `count`."""
    limit: tuple[Arg, ...] = ('LIMIT', 0, count) if count is not None else ()
    return Call(exact_scores, command=('ZRANGEBYSCORE', key, low, high, 'WITHSCORES', *limit))


def members_by_score(key: str, low: Arg, high: Arg, count: int | None = None) -> Call[list[str]]:
    limit: tuple[Arg, ...] = ('LIMIT', 0, count) if count is not None else ()
    return Call(lambda reply: [str(m) for m in reply], command=('ZRANGEBYSCORE', key, low, high, *limit))


def as_read(member: str) -> bytes:
    """A member as the bytes Redis holds: one that is not UTF-8 (a hand edit) was read back with surrogates,
    which redis-py's strict encoding refuses to send; these bytes reach exactly that member."""
    return member.encode('utf-8', 'surrogateescape')


def tied_after(key: str, score: float, member: str, count: int) -> Call[list[str]]:
    """At most `count` members of `key` scored `score` that sort after `member` (see read_tied.lua)."""
    return Call(lambda reply: [str(m) for m in reply], 'read_tied', (key,), (repr(score), as_read(member), count))


def by_rank(key: str, start: int, stop: int) -> Call[list[str]]:
    return Call(lambda reply: [str(m) for m in reply], command=('ZRANGE', key, start, stop))


def by_lex(key: str, low: str, high: str, count: int) -> Call[list[str]]:
    return Call(lambda reply: [str(m) for m in reply], command=('ZRANGEBYLEX', key, low, high, 'LIMIT', 0, count))


def count_by_score(key: str, low: Arg, high: Arg) -> Call[int]:
    return Call(as_int, command=('ZCOUNT', key, low, high))


def cardinality(key: str) -> Call[int]:
    return Call(as_int, command=('ZCARD', key))


def score(key: str, member: str) -> Call[int | None]:
    return Call(optional_int, command=('ZSCORE', key, member))


def scores(key: str, members: Sequence[str]) -> Call[list[int | None]]:
    """Each member's score (None where absent), in order; one ZMSCORE."""
    if not members:
        return Call(lambda reply: [], command=('PING',))
    return Call(lambda reply: [optional_int(s) for s in reply], command=('ZMSCORE', key, *members))


def add(key: str, scored_members: Sequence[tuple[str, int]], *, only_new: bool = False) -> Call[int]:
    flat: list[Arg] = [part for member, at in scored_members for part in (at, member)]
    return Call(as_int, command=('ZADD', key, *(('NX',) if only_new else ()), *flat))


def remove(key: str, members: Sequence[str | bytes]) -> Call[int]:
    if not members:
        return Call(lambda reply: 0, command=('PING',))
    return Call(as_int, command=('ZREM', key, *members))


def _page(reply: Any) -> tuple[int, list[str]]:
    """A SCAN-family page: (next cursor, members or fields); redis-py pairs ZSCAN's scores and makes HSCAN's
    fields a mapping, a client without its callbacks leaves them flat."""
    cursor, items = reply
    if isinstance(items, dict):
        return as_int(cursor), [str(field) for field in items]
    if items and isinstance(items[0], list | tuple):
        return as_int(cursor), [str(item[0]) for item in items]
    return as_int(cursor), [str(item) for item in items]


def zscan(key: str, cursor: int, count: int) -> Call[tuple[int, list[str]]]:
    """One ZSCAN page: (next cursor, members)."""
    return Call(_page, command=('ZSCAN', key, cursor, 'COUNT', count))


def sscan(key: str, cursor: int, count: int) -> Call[tuple[int, list[str]]]:
    """One SSCAN page: (next cursor, members)."""
    return Call(_page, command=('SSCAN', key, cursor, 'COUNT', count))


def set_remove(key: str, members: Sequence[str]) -> Call[int]:
    """SREM of members as read (see `as_read`)."""
    if not members:
        return Call(lambda reply: 0, command=('PING',))
    return Call(as_int, command=('SREM', key, *map(as_read, members)))


def hash_all(key: str) -> Call[dict[str, str]]:
    return Call(as_dict, command=('HGETALL', key))


def hash_get(key: str, field: str) -> Call[str | None]:
    return Call(lambda reply: None if reply is None else str(reply), command=('HGET', key, field))


def hash_set(key: str, fields: dict[str, Arg]) -> Call[None]:
    flat: list[Arg] = [part for field, value in fields.items() for part in (field, value)]
    return Call(ignore, command=('HSET', key, *flat))


def hash_delete(key: str, fields: Sequence[str]) -> Call[int]:
    return Call(as_int, command=('HDEL', key, *fields))


def next_token(epoch_key: str) -> Call[int]:
    """A fresh fencing token: the epoch counter, raised by one (lifted first on a new replication history)."""
    return Call(as_int, 'next_token', (epoch_key,), ())


def increment(key: str, field: str, by: int = 1) -> Call[int]:
    return Call(as_int, command=('HINCRBY', key, field, by))


def increment_float(key: str, field: str, by: float) -> Call[None]:
    return Call(ignore, command=('HINCRBYFLOAT', key, field, repr(by)))


def hscan(key: str, cursor: int, count: int) -> Call[tuple[int, list[str]]]:
    """One HSCAN page: (next cursor, fields)."""
    return Call(_page, command=('HSCAN', key, cursor, 'COUNT', count))


def scan(cursor: int, pattern: str, count: int, type_: str) -> Call[tuple[int, list[str]]]:
    """One SCAN page of keys matching `pattern` of one type: (next cursor, keys)."""
    return Call(_page, command=('SCAN', cursor, 'MATCH', pattern, 'COUNT', count, 'TYPE', type_))


def set_once(key: str, value: Arg, ttl_ms: int) -> Call[bool]:
    """SET NX PX: True if this call set it."""
    return Call(lambda reply: reply is not None and reply is not False, command=('SET', key, value, 'NX', 'PX', ttl_ms))


def set_if_absent(key: str, value: Arg) -> Call[bool]:
    """SET NX, no expiry: True if this call set it."""
    return Call(lambda reply: reply is not None and reply is not False, command=('SET', key, value, 'NX'))


def exists(key: str) -> Call[bool]:
    return Call(lambda reply: as_int(reply) > 0, command=('EXISTS', key))


def hash_keys(key: str) -> Call[list[str]]:
    return Call(lambda reply: [str(field) for field in reply], command=('HKEYS', key))


def delete(*keys: str) -> Call[int]:
    return Call(as_int, command=('DEL', *keys))


def expire_if_none(key: str, ttl_ms: int) -> Call[int]:
    """PEXPIRE NX: give `key` an expiry unless it has one."""
    return Call(as_int, command=('PEXPIRE', key, ttl_ms, 'NX'))


def config_value(name: str) -> Call[str]:
    """One CONFIG GET value ('' when the server does not have it)."""

    def parse(reply: Any) -> str:
        pairs = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
        return str(pairs.get(name, ''))

    return Call(parse, command=('CONFIG', 'GET', name))


def server_info(section: str) -> Call[dict[str, Any]]:
    """INFO `section`, as redis-py's INFO callback parses it."""
    return Call(dict, command=('INFO', section))
