"""AsyncLifecycle's durable calls: checkpoint, restore, notices (async iterator), make_room; on a FixedClock, with
the injected Redis client, clock and store, and the evictor of a worker sharing them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from lifecycle import AsyncLifecycle, FixedClock, Lifecycle, SessionState
from lifecycle.models import NoticeKind, ReapReason
from lifecycle.pool import servers
from lifecycle.pool.executor import Executor
from lifecycle.reaper.eviction import Evictor, Outcome
from lifecycle.stores import store_from_settings
from lifecycle.stores.memory import InMemorySnapshotStore
from lifecycle.stores.mongo import AsyncMongoSnapshotStore
from tests.conftest import SettingsFactory


def test_async_checkpoint_evict_restore_and_notices(make_reaper_settings: SettingsFactory, real_redis: Any) -> None:
    settings = make_reaper_settings(max_sessions=2, min_idle_s=60)
    clock = FixedClock()
    store = store_from_settings(settings)
    assert store is not None
    worker = Executor(settings, clock=clock)

    async def main() -> None:
        client = servers.connect_async(settings, decode_responses=True)  # a cluster's client, on one
        async with AsyncLifecycle(settings, redis_client=client, clock=clock, store=store) as lc:
            assert lc.redis is client
            assert lc.store is store
            await lc.activate(await lc.reserve('api-1'), 'a1')
            async with lc.turn('a1'):
                pass
            assert await lc.checkpoint('a1', {'draft': 'v1'}, [{'id': 'm1', 'text': 'hi'}]) == 1
            result = Evictor(worker, store, lc.driver).evict('a1', ReapReason.IDLE, 2**50)
            assert result.outcome is Outcome.EVICTED
            assert (await lc.status('a1')).state is SessionState.RESUMABLE  # type: ignore[union-attr]
            notices = [n async for n in lc.notices('api-1')]
            assert [(n.kind, n.session_id) for n in notices] == [(NoticeKind.EVICTED, 'a1')]

            restored = await lc.restore('a1', 'api-1')
            assert (restored.sandbox_reset, restored.snapshot, restored.checkpoint_seq) == (True, {'draft': 'v1'}, 1)
            assert (await lc.status('a1')).state is SessionState.LIVE  # type: ignore[union-attr]

            await lc.activate(await lc.reserve('api-1'), 'a2')
            clock.advance(seconds=60)  # both idle for min_idle_s; the pool (cap 2) is full
            await lc.checkpoint('a1', {'draft': 'v2'})
            await lc.checkpoint('a2', {'draft': 'a2'})
            admitted = await lc.reserve('api-2', make_room=True)
            assert admitted.owner == 'api-2'
            assert (await lc.status('a1')).state is SessionState.RESUMABLE  # type: ignore[union-attr]
            assert await lc.close('a2')
            assert (await lc.status('a2')).state is SessionState.CLOSED  # type: ignore[union-attr]
            follow = lc.notices('api-1', after=notices[-1].id, block_s=0.2)
            assert (await anext(follow)).session_id == 'a1'  # make_room's eviction notice
            await follow.aclose()

    try:
        asyncio.run(main())
    finally:
        worker.close()
        store.close()


def test_the_async_clients_own_store_is_native_async(make_reaper_settings: SettingsFactory, real_redis: Any) -> None:
    """With no store passed in, the durable calls run on pymongo's AsyncMongoClient: awaited, no worker thread."""
    settings = make_reaper_settings()
    clock = FixedClock()
    worker = Executor(settings, clock=clock)
    sync_store = store_from_settings(settings)
    assert sync_store is not None

    async def main() -> None:
        async with AsyncLifecycle(settings, clock=clock) as lc:
            own: object = lc.store
            assert isinstance(own, AsyncMongoSnapshotStore)
            await lc.activate(await lc.reserve('api-1'), 'n1')
            async with lc.turn('n1'):
                pass
            assert await lc.checkpoint('n1', {'draft': 'v1'}, [{'id': 'm1', 'text': 'hi'}]) == 1
            result = Evictor(worker, sync_store, lc.driver).evict('n1', ReapReason.IDLE, 2**50)
            assert result.outcome is Outcome.EVICTED
            assert (await lc.status('n1')).state is SessionState.RESUMABLE  # type: ignore[union-attr]
            restored = await lc.restore('n1', 'api-2')
            assert (restored.snapshot, restored.messages) == ({'draft': 'v1'}, [{'id': 'm1', 'text': 'hi'}])
            assert await lc.close('n1')
            assert (await lc.status('n1')).state is SessionState.CLOSED  # type: ignore[union-attr]

    try:
        asyncio.run(main())
    finally:
        worker.close()
        sync_store.close()


class GatedRestore(InMemorySnapshotStore):
    """The in-memory store, but its restore waits for a gate (a slow MongoDB), natively async."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def restore(self, session_id: str, token: int, owner: str) -> Mapping[str, Any] | None:  # type: ignore[override]
        self.waiting.set()
        await self.gate.wait()
        return super().restore(session_id, token, owner)


def test_a_restore_cancelled_half_way_still_ends_consistent(
    make_reaper_settings: SettingsFactory, real_redis: Any
) -> None:
    # Regression: the cancellation was thrown into the restore after its Redis activation and before its MongoDB
    # write, so the session was live in Redis and resumable in MongoDB: every checkpoint refused until a sweep.
    settings = make_reaper_settings()
    clock = FixedClock()
    store: Any = GatedRestore()  # its restore is a coroutine function: not the sync protocol
    worker = Executor(settings, clock=clock)

    async def main() -> None:
        async with AsyncLifecycle(settings, clock=clock, store=store) as lc:
            await lc.activate(await lc.reserve('api-1'), 'c1')
            Evictor(worker, store, lc.driver).evict('c1', ReapReason.IDLE, 2**50)
            restoring = asyncio.create_task(lc.restore('c1', 'api-2'))
            await store.waiting.wait()  # activated in Redis; its MongoDB write in flight
            restoring.cancel()
            with pytest.raises(asyncio.CancelledError):
                await restoring
            store.gate.set()
        # disconnect() waited for the restore to finish
        info = Lifecycle(settings, clock=clock, store=store).status('c1')
        assert info is not None
        assert info.state is SessionState.LIVE
        assert (store.load('c1') or {}).get('state') == 'live'

    try:
        asyncio.run(main())
    finally:
        worker.close()


def test_make_room_of_the_async_client_uses_the_injected_redis(
    make_reaper_settings: SettingsFactory, real_redis: Any
) -> None:
    # Regression: its evictor connected to settings.redis_url, not to the client passed in.
    from lifecycle.ops.embedded import free_port

    real = make_reaper_settings(max_sessions=1, min_idle_s=60)
    settings = make_reaper_settings(max_sessions=1, min_idle_s=60, redis_url=f'redis://127.0.0.1:{free_port()}/0')
    clock = FixedClock()
    store = InMemorySnapshotStore()

    async def main() -> None:
        client = servers.connect_async(real, decode_responses=True)
        async with AsyncLifecycle(settings, redis_client=client, clock=clock, store=store) as lc:
            await lc.activate(await lc.reserve('api-1'), 'm1')
            clock.advance(seconds=60)
            admitted = await lc.reserve('api-2', make_room=True)
            assert admitted.owner == 'api-2'
            assert (await lc.status('m1')).state is SessionState.RESUMABLE  # type: ignore[union-attr]

    asyncio.run(main())
