"""Reading records from the meta buckets, on fakeredis and on the real server."""

from __future__ import annotations

import pytest
import redis

from lifecycle import FixedClock, Lifecycle, SessionInfo, Settings
from lifecycle.pool.records import read_records


def live(lc: Lifecycle, session_id: str, owner: str = 'api-1', tenant: str | None = None) -> SessionInfo:
    return lc.activate(lc.reserve(owner, tenant), session_id)


def test_a_session_record_lives_in_its_own_bucket_and_leaves_with_it(lc: Lifecycle) -> None:
    info = live(lc, 'chat-1', tenant='acme')
    k = lc.index.keys
    created = lc.now_ms()
    assert info.tenure is not None  # the activation's fencing token, kept in the record
    assert lc.redis.hgetall(k.meta_of('chat-1')) == {'chat-1': f'api-1|acme||{created}|0|{info.tenure}'}
    lc.close('chat-1')
    assert not lc.redis.exists(k.meta_of('chat-1'))


def test_read_records_keeps_the_order_of_the_ids_across_buckets(lc: Lifecycle) -> None:
    ids = [f'chat-{i}' for i in range(5)]
    for i, session_id in enumerate(ids):
        live(lc, session_id, owner=f'api-{i}')
    k = lc.index.keys
    assert len({k.meta_of(session_id) for session_id in ids}) > 1
    wanted = ['chat-3', 'gone', 'chat-0', 'chat-4', 'chat-3']
    owners = [record.split('|', 1)[0] if record else None for record in read_records(lc.pool, wanted)]
    assert owners == ['api-3', None, 'api-0', 'api-4', 'api-3']
    assert read_records(lc.pool, []) == []


@pytest.mark.integration
def test_buckets_stay_listpack_encoded_on_the_real_server(
    settings: Settings, real_redis: redis.Redis, fixed_clock: FixedClock
) -> None:
    """The memory figure rests on this: small buckets are compact listpacks, not hashtables."""
    lc = Lifecycle(settings.model_copy(update={'max_sessions': 1_000}), redis_client=real_redis, clock=fixed_clock)
    for i in range(300):
        live(lc, f'{i:08d}-0000-4000-8000-000000000000')  # 36 characters, like a UUID
    k = lc.index.keys
    buckets = {k.meta_of(f'{i:08d}-0000-4000-8000-000000000000') for i in range(300)}
    assert len(buckets) > 250  # spread out, not piled into a few
    assert {real_redis.object('encoding', bucket) for bucket in buckets} == {'listpack'}
