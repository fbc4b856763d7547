"""Sandbox drivers: a signed webhook against a real local HTTP server, process groups with real signals."""

from __future__ import annotations

import hmac
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lifecycle import FixedClock, Settings
from lifecycle.sandboxes import (
    DockerDriver,
    NoopDriver,
    ProcessDriver,
    SandboxError,
    SandboxLease,
    WebhookDriver,
    driver_from_settings,
)
from lifecycle.sandboxes.base import extend_sandbox, leftover_leases, release_lease
from lifecycle.sandboxes.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.conftest import group_alive

SECRET = 'shh'


class Receiver(ThreadingHTTPServer):
    """Answers each POST with the next status of `statuses`, recording what arrived and whether it was signed."""

    def __init__(self, statuses: list[int]) -> None:
        super().__init__(('127.0.0.1', 0), Handler)
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bool]] = []

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.server_address[1]}/sandboxes/release'


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers['Content-Length']))
        expected = sign(SECRET, self.headers[TIMESTAMP_HEADER], body)
        self.server.received.append((json.loads(body), hmac.compare_digest(expected, self.headers[SIGNATURE_HEADER])))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    server = Receiver(list(getattr(request, 'param', [])))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize('receiver', [[500, 503, 200]], indirect=True)
def test_the_webhook_is_signed_and_retried_on_server_errors(receiver: Receiver) -> None:
    WebhookDriver(receiver.url, SECRET, retries=3, backoff_s=0.01).release('s1', 'idle')
    assert receiver.received == [({'event': 'release', 'session_id': 's1', 'reason': 'idle'}, True)] * 3


@pytest.mark.parametrize('receiver', [[404]], indirect=True)
def test_a_sandbox_already_gone_is_released(receiver: Receiver) -> None:
    WebhookDriver(receiver.url, SECRET, retries=0).release('s1', 'idle')
    assert len(receiver.received) == 1


@pytest.mark.parametrize('receiver', [[400]], indirect=True)
def test_a_refused_release_fails_at_once(receiver: Receiver) -> None:
    with pytest.raises(SandboxError, match='HTTP 400'):
        WebhookDriver(receiver.url, SECRET, retries=3, backoff_s=0.01).release('s1', 'idle')
    assert len(receiver.received) == 1


@pytest.mark.parametrize('receiver', [[503, 200, 404]], indirect=True)
def test_the_webhook_is_told_where_a_deadline_moved(receiver: Receiver) -> None:
    driver = WebhookDriver(receiver.url, SECRET, retries=3, backoff_s=0.01)
    assert extend_sandbox(driver, 's1', 1_700_000_000_000) is True  # after one retry
    assert extend_sandbox(driver, 's1', 1_700_000_000_000) is False  # 404: an endpoint that cannot move it
    assert receiver.received == [({'event': 'extend', 'session_id': 's1', 'expires_at_ms': 1_700_000_000_000},
                                  True)] * 3  # fmt: skip
    assert extend_sandbox(ProcessDriver.__new__(ProcessDriver), 's1', 1) is False  # it has no way to move one


def test_an_unreachable_endpoint_fails_after_its_retries(receiver: Receiver) -> None:
    url = receiver.url
    receiver.shutdown()
    receiver.server_close()
    with pytest.raises(SandboxError, match="release of 's1'"):
        WebhookDriver(url, SECRET, timeout_s=0.5, retries=1, backoff_s=0.01).release('s1', 'idle')


def wait_dead(pgid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_process_sandbox_is_released_with_its_whole_group(tmp_path: Path) -> None:
    driver = ProcessDriver(tmp_path, grace_s=1)
    pgid = driver.start('s1', ['sh', '-c', 'sleep 600 & sleep 600'], ttl_s=600)
    assert [lease.session_id for lease in driver.leases()] == ['s1']
    assert group_alive(pgid)
    driver.release('s1', 'idle')
    assert wait_dead(pgid, 5)
    assert driver.leases() == []
    driver.release('s1', 'idle')  # idempotent


def test_a_process_sandbox_ends_itself_at_its_deadline_with_no_one_left_to_release_it(tmp_path: Path) -> None:
    driver = ProcessDriver(tmp_path)
    pgid = driver.start('s1', ['sleep', '600'], ttl_s=1)
    lease = driver.leases()[0]
    assert lease.expires_at_ms <= time.time_ns() // 1_000_000 + 1_000
    assert wait_dead(pgid, 10)


def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    driver = ProcessDriver(tmp_path)
    (tmp_path / 's1.json').write_text(json.dumps({'pgid': os.getpgid(0), 'started': 'not-ours', 'expires_at_ms': 0}))
    driver.release('s1', 'idle')  # our own group, but not the recorded process: left alone
    assert not (tmp_path / 's1.json').exists()


def test_drivers_are_chosen_by_settings(tmp_path: Path) -> None:
    assert isinstance(driver_from_settings(Settings()), NoopDriver)
    assert isinstance(driver_from_settings(Settings(sandbox_driver='process', sandbox_state_dir=str(tmp_path))),
                      ProcessDriver)  # fmt: skip
    webhook = Settings(sandbox_driver='webhook', sandbox_webhook_url='http://x', sandbox_webhook_secret='s')
    assert isinstance(driver_from_settings(webhook), WebhookDriver)
    with pytest.raises(ValueError, match='LIFECYCLE_SANDBOX_WEBHOOK_URL'):
        Settings(sandbox_driver='webhook')


def test_the_docker_driver_is_chosen_by_settings_with_its_engine_limits_and_grace() -> None:
    settings = Settings(sandbox_driver='docker', sandbox_docker_url='unix:///nowhere.sock', sandbox_memory='64m',
                        sandbox_pids=32, sandbox_stop_grace_s=2, key_prefix='p1')  # fmt: skip
    driver = driver_from_settings(settings, FixedClock(5))
    assert isinstance(driver, DockerDriver)  # built without reaching the engine: it is asked on first use
    assert (driver.pool, driver.engine, driver.grace_s, driver.clock.now_ms()) == ('p1', 'unix:///nowhere.sock', 2, 5)
    assert driver.limits.options() == {'mem_limit': '64m', 'pids_limit': 32}


def test_the_orphan_grace_covers_a_reservations_lease() -> None:
    assert Settings().orphan_grace_s == 300
    assert Settings(reservation_lease_s=600).orphan_grace_s == 1200  # an existing setting alone stays valid
    assert Settings(sandbox_orphan_grace_s=60, reservation_lease_s=60).orphan_grace_s == 60
    with pytest.raises(ValueError, match='LIFECYCLE_SANDBOX_ORPHAN_GRACE_S=30 is shorter than'):
        Settings(sandbox_orphan_grace_s=30, reservation_lease_s=60)


def test_leftover_leases_are_those_past_their_deadline_or_the_orphan_grace() -> None:
    now = 1_000_000
    leases = [
        SandboxLease('past', now, now - 1),
        SandboxLease('running', now + 1, now - 59_999),
        SandboxLease('orphan', now + 1, now - 60_000),
        SandboxLease('unknown-start', now + 1),
    ]
    assert [lease.session_id for lease in leftover_leases(leases, now, 60_000)] == ['past', 'orphan']


def test_a_lease_is_released_exactly_where_the_driver_can_and_by_session_elsewhere(tmp_path: Path) -> None:
    released: list[tuple[str, str]] = []

    class SessionOnly:
        def release(self, session_id: str, reason: str) -> None:
            released.append((session_id, reason))

        def leases(self) -> list[SandboxLease]:
            return []

    release_lease(SessionOnly(), SandboxLease('s1', 5, 1, 'c1'), 'expired')
    assert released == [('s1', 'expired')]
    process = ProcessDriver(tmp_path)
    process.start('s2', ['sleep', '30'], 30)
    (old,) = process.leases()
    stale = SandboxLease('s2', old.expires_at_ms - 1)  # an earlier sandbox of the session: not this one
    release_lease(process, stale, 'expired')
    assert process.leases() == [old]
    release_lease(process, old, 'expired')
    assert process.leases() == []


def test_a_docker_driver_passed_in_without_a_clock_dates_its_sandboxes_by_the_clients_clock() -> None:
    import fakeredis

    from lifecycle import Lifecycle

    injected = DockerDriver('p', 'unix:///nowhere.sock')
    own = DockerDriver('p', 'unix:///nowhere.sock', clock=FixedClock(3))
    for driver, expected in ((injected, 7), (own, 3)):
        lc = Lifecycle(Settings(), redis_client=fakeredis.FakeRedis(decode_responses=True), clock=FixedClock(7),
                       driver=driver)  # fmt: skip
        assert lc.driver is driver
        assert driver.clock.now_ms() == expected
        lc.disconnect()
