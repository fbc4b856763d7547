"""Reading many session records at once from the meta buckets: one round trip for a page, a few for the pool.

Each session's packed record lives in one of `META_BUCKETS` small hashes (`Keys.meta_of`), so a reader
of many sessions groups them by bucket and pipelines one HMGET per bucket, without a transaction: the
buckets are read as they are, like the sorted sets read beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lifecycle.errors import LifecycleError
from lifecycle.pool.calls import Call
from lifecycle.pool.executor import Executor
from lifecycle.pool.keys import Keys


def record_calls(keys: Keys, ids: Sequence[str]) -> tuple[list[Call[Any]], Callable[[Sequence[Any]], list[str | None]]]:
    """One HMGET per bucket of `ids`, and what turns their results (from `run_each`) into records.

    The returned function takes the results of exactly those calls, in order, and gives each id's record
    in the order of `ids` (None for a session no bucket holds, or whose bucket is not a hash).
    """
    positions: dict[str, list[int]] = {}
    for i, session_id in enumerate(ids):
        positions.setdefault(keys.meta_of(session_id), []).append(i)
    reads: list[Call[Any]] = [
        Call(list, command=('HMGET', bucket, *[ids[i] for i in where])) for bucket, where in positions.items()
    ]

    def gather(results: Sequence[Any]) -> list[str | None]:
        records: list[str | None] = [None] * len(ids)
        for where, values in zip(positions.values(), results, strict=True):
            if isinstance(values, LifecycleError):
                continue  # a bucket some hand made another type (WRONGTYPE): its records read as missing
            for i, record in zip(where, values, strict=True):
                records[i] = record
        return records

    return reads, gather


def read_records(pool: Executor, ids: Sequence[str]) -> list[str | None]:
    """The packed record of each of `ids`, in their order (None where absent), in one round trip."""
    if not ids:
        return []
    reads, gather = record_calls(pool.keys, ids)
    return gather(pool.run_each(reads))
