"""The example FastAPI service (examples/agent_service.py) under a real uvicorn server, over HTTP, on real
Redis and the MongoDB-wire server; a reaper in this process sweeps with its clock ahead."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from examples.agent_service import create_app
from lifecycle import FixedClock, Settings
from lifecycle.models import SANDBOX_RESET_NOTE
from lifecycle.ops.embedded import free_port
from lifecycle.reaper.eviction import Outcome
from lifecycle.reaper.sweeps import SweepKind
from tests.conftest import SettingsFactory
from tests.integration.conftest import ReaperFactory
from tests.integration.reaper import Reaper

CAP = 4
AHEAD_S = 60  # the reaper's clock: every session idle past its 5 s timeout, no busy lease (600 s) lapsed


class Served:
    """The app under uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(create_app(settings, owner='api-1'), host='127.0.0.1', port=self.port,
                                log_level='warning', lifespan='on')  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name='uvicorn', daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive(), 'uvicorn stopped'
            assert time.monotonic() < deadline, 'uvicorn did not start'
            time.sleep(0.05)
        self.url = f'http://127.0.0.1:{self.port}'

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def settings(make_reaper_settings: SettingsFactory) -> Settings:
    return make_reaper_settings(max_sessions=CAP, idle_ttl_s=5, default_ttl_s=3600, busy_lease_s=600)


@pytest.fixture
def served(settings: Settings) -> Iterator[Served]:
    server = Served(settings)
    yield server
    server.stop()


@pytest.fixture
def reaper(settings: Settings, make_reaper: ReaperFactory) -> Reaper:
    return make_reaper(settings, FixedClock(int(time.time() * 1000) + AHEAD_S * 1000))


def test_concurrent_creates_over_the_cap_get_429_with_a_retry_after(served: Served) -> None:
    async def storm() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            return list(await asyncio.gather(*(http.post('/sessions', json={}) for _ in range(12))))

    responses = asyncio.run(storm())
    assert sorted(r.status_code for r in responses) == [201] * CAP + [429] * (12 - CAP)
    for refused in (r for r in responses if r.status_code == 429):
        assert int(refused.headers['Retry-After']) >= 1
        assert refused.json()['error'] == 'capacity'
        assert refused.json()['cap'] == CAP


def test_a_streamed_turn_is_never_evicted_and_an_idle_session_is_reaped_and_restored(
    served: Served, reaper: Reaper
) -> None:
    http = httpx.Client(base_url=served.url, timeout=30)
    session_id = http.post('/sessions', json={}).json()['session_id']
    received: dict[str, Any] = {}

    def stream() -> None:
        message = {'text': 'one two three four five six', 'delay_s': 0.5}
        with http.stream('POST', f'/sessions/{session_id}/messages', json=message) as response:
            received['status'] = response.status_code
            received['text'] = ''.join(response.iter_text())

    streaming = threading.Thread(target=stream)
    streaming.start()
    time.sleep(1.0)  # mid-stream: idle past its timeout by the reaper's clock, but busy
    assert reaper.sweep(SweepKind.IDLE).orders == []
    assert reaper.lc.status(session_id).busy  # type: ignore[union-attr]
    streaming.join(30)
    assert (received['status'], received['text'].split()) == (200, ['one', 'two', 'three', 'four', 'five', 'six'])
    assert http.get(f'/sessions/{session_id}').json()['turns'] == 1
    document = reaper.document(session_id)
    assert document is not None
    assert document['checkpoint_seq'] == 1  # the app checkpointed right after the turn

    reaper.sweep(SweepKind.IDLE)
    assert reaper.results[-1].outcome is Outcome.EVICTED
    deadline = time.monotonic() + 10
    while http.get(f'/sessions/{session_id}').json().get('in_memory', True):
        assert time.monotonic() < deadline, 'the evicted notice never dropped the runtime'
        time.sleep(0.05)
    gone = http.post(f'/sessions/{session_id}/messages', json={'text': 'hello?'})
    assert (gone.status_code, gone.json()['error']) == (410, 'not_live')

    restored = http.post(f'/sessions/{session_id}/restore').json()
    assert (restored['note'], restored['messages']) == (SANDBOX_RESET_NOTE, 3)
    again = http.post(f'/sessions/{session_id}/messages', json={'text': 'back again'})
    assert (again.status_code, again.text.split()) == (200, ['back', 'again'])
    assert http.get(f'/sessions/{session_id}').json() == {
        'session_id': session_id, 'state': 'live', 'busy': False, 'turns': 2, 'in_memory': True,
    }  # fmt: skip
    http.close()
