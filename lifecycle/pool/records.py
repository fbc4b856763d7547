"""Reading many session records at once from the meta buckets: one round trip for a page, a few for the pool.

Each session's packed record lives in one of `META_BUCKETS` small hashes (`Keys.meta_of`), so a reader
of many sessions groups them by bucket and pipelines one HMGET per bucket, without a transaction: the
buckets are read as they are, like the sorted sets read beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis

from lifecycle.pool.keys import META_BUCKETS, Keys

SCAN_BUCKETS = 256  # buckets read per round trip by scan_records: ~15,000 records at 1,000,000 sessions


def queue_records(
    pipe: redis.client.Pipeline, keys: Keys, ids: Sequence[str]
) -> Callable[[Sequence[Any]], list[str | None]]:
    """Queue one HMGET per bucket of `ids` on `pipe`; returns what turns those replies into records.

    The returned function takes the replies of exactly the queued HMGETs, in the order they were
    queued (execute the pipeline with raise_on_error=False), and gives each id's record in the order of
    `ids` (None for a session no bucket holds, or whose bucket is not a hash).
    """
    positions: dict[str, list[int]] = {}
    for i, session_id in enumerate(ids):
        positions.setdefault(keys.meta_of(session_id), []).append(i)
    for bucket, where in positions.items():
        pipe.hmget(bucket, [ids[i] for i in where])

    def gather(replies: Sequence[Any]) -> list[str | None]:
        records: list[str | None] = [None] * len(ids)
        for where, values in zip(positions.values(), replies, strict=True):
            if isinstance(values, Exception):
                continue  # a bucket some hand made another type (WRONGTYPE): its records read as missing
            for i, record in zip(where, values, strict=True):
                records[i] = record
        return records

    return gather


def read_records(client: redis.Redis, keys: Keys, ids: Sequence[str]) -> list[str | None]:
    """The packed record of each of `ids`, in their order (None where absent), in one round trip."""
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    gather = queue_records(pipe, keys, ids)
    return gather(pipe.execute(raise_on_error=False))


def scan_records(client: redis.Redis, keys: Keys, batch: int = SCAN_BUCKETS) -> Iterator[tuple[str, str]]:
    """Every (session_id, record) of the pool, `batch` buckets per round trip; not a snapshot.

    Like HSCAN, a session added or removed while the scan runs may or may not be seen.
    """
    for start in range(0, META_BUCKETS, batch):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(start + batch, META_BUCKETS)):
            pipe.hgetall(keys.meta_bucket(n))
        for bucket in pipe.execute():
            yield from bucket.items()
