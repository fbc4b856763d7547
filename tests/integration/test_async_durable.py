"""AsyncLifecycle's durable calls: checkpoint, restore, notices (async iterator), make_room."""

from __future__ import annotations

import asyncio
from typing import Any

from lifecycle import AsyncLifecycle, SessionState
from lifecycle.models import NoticeKind, ReapReason
from lifecycle.reaper.eviction import Evictor, Outcome
from tests.conftest import SettingsFactory


def test_async_checkpoint_evict_restore_and_notices(make_reaper_settings: SettingsFactory, real_redis: Any) -> None:
    settings = make_reaper_settings(max_sessions=2, min_idle_s=1)

    async def main() -> None:
        async with AsyncLifecycle(settings) as lc:
            await lc.activate(await lc.reserve('api-1'), 'a1')
            async with lc.turn('a1'):
                pass
            assert await lc.checkpoint('a1', {'draft': 'v1'}, [{'id': 'm1', 'text': 'hi'}]) == 1
            worker = lc.durable
            result = Evictor(worker, worker.store, worker.driver).evict('a1', ReapReason.IDLE, 2**50)
            assert result.outcome is Outcome.EVICTED
            assert (await lc.status('a1')).state is SessionState.RESUMABLE  # type: ignore[union-attr]
            notices = [n async for n in lc.notices('api-1')]
            assert [(n.kind, n.session_id) for n in notices] == [(NoticeKind.EVICTED, 'a1')]

            restored = await lc.restore('a1', 'api-1')
            assert (restored.sandbox_reset, restored.snapshot, restored.checkpoint_seq) == (True, {'draft': 'v1'}, 1)
            assert (await lc.status('a1')).state is SessionState.LIVE  # type: ignore[union-attr]

            await lc.activate(await lc.reserve('api-1'), 'a2')
            await asyncio.sleep(1.1)  # both idle for min_idle_s; the pool (cap 2) is full
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

    asyncio.run(main())
