"""The executors' command packer: the bytes redis-py's own hiredis packer sends, without its per-argument copy."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.connection import HiredisRespSerializer
from redis.exceptions import DataError

from lifecycle import Lifecycle, Settings
from lifecycle.pool.servers import CommandPacker
from tests.conftest import REDIS_URL

COMMANDS: list[tuple[Any, ...]] = [
    ('ZADD', '{p}:live', 'XX', 'GT', 1_700_000_000_000, 'touch-1', 1_700_000_000_001, 'touch-2'),
    ('EVALSHA', 'a' * 40, 2, 'k1', 'k2', 'a|b|', '', 0, 3.5, -7),
    ('CONFIG SET', 'slowlog-log-slower-than', 250),  # redis-py's own commands name two words in one
    (b'SCRIPT LOAD', b'return 1'),
    ('SET', 'k', bytearray(b'v\x00w')),
    ('SET', 'k', memoryview(b'\xffbytes')),
    ('SET', 'k', memoryview(b'abcdef')[::2]),  # strided: its bytes, not its raw buffer
    ('SET', 'k', memoryview(b'abcdef')[::-1]),
    ('HSET', 'k', 'f', 'é ü'),
]


@pytest.mark.parametrize('command', COMMANDS, ids=lambda command: str(command[0]))
def test_it_packs_what_redis_pys_hiredis_packer_packs(command: tuple[Any, ...]) -> None:
    assert b''.join(CommandPacker().pack(*command)) == b''.join(HiredisRespSerializer().pack(*command))


@pytest.mark.parametrize('bad', [None, {'a': 1}, ['a'], object()], ids=repr)
def test_an_argument_hiredis_cannot_send_is_a_data_error(bad: object) -> None:
    with pytest.raises(DataError):
        CommandPacker().pack('SET', 'k', bad)


@pytest.mark.integration
def test_the_executors_connections_use_it_on_the_real_server(key_prefix: str) -> None:
    with Lifecycle(Settings(redis_url=REDIS_URL, key_prefix=key_prefix)) as lc:
        client: redis.Redis = lc.redis
        assert isinstance(client.connection_pool.connection_kwargs['command_packer'], CommandPacker)
        key = f'{{{lc.settings.key_prefix}}}:packer'
        try:
            client.execute_command('SET', key, memoryview(b'raw'))  # type: ignore[no-untyped-call]
            assert client.config_get('maxmemory-policy')  # 'CONFIG GET': two words in one
            assert client.get(key) == 'raw'
        finally:
            client.delete(key)
