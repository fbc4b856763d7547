"""A Redis that cannot be reached gives one clear error that names it (without its password)."""

from __future__ import annotations

import asyncio
import re

import pytest

from lifecycle import AsyncLifecycle, BackendUnavailable, Lifecycle, LifecycleError, Settings
from lifecycle.ops.embedded import free_port


@pytest.fixture
def down_settings() -> Settings:
    return Settings(redis_url=f'redis://user:secret@127.0.0.1:{free_port()}/0', key_prefix='down')


def test_sync_calls_raise_backend_unavailable_naming_the_server(down_settings: Settings) -> None:
    lc = Lifecycle(down_settings)
    lc.redis.connection_pool.connection_kwargs['socket_connect_timeout'] = 0.5
    for call in (lambda: lc.reserve('api-1'), lambda: lc.touch('s1'), lc.stats):
        with pytest.raises(BackendUnavailable, match=re.escape('127.0.0.1')) as info:
            call()
        assert 'secret' not in str(info.value)
        assert isinstance(info.value, LifecycleError)
    lc.disconnect()


def test_async_calls_raise_backend_unavailable(down_settings: Settings) -> None:
    async def main() -> None:
        async with AsyncLifecycle(down_settings) as lc:
            with pytest.raises(BackendUnavailable, match=re.escape('user:***@127.0.0.1')):
                await lc.reserve('api-1')

    asyncio.run(main())
