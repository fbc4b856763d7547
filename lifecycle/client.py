"""Lifecycle: the synchronous web-tier client of the session pool."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from lifecycle.background import Repeater
from lifecycle.clock import Clock, RedisClock
from lifecycle.errors import BackendUnavailable
from lifecycle.models import PoolStats, Reservation, SessionInfo
from lifecycle.scripts import SOURCES
from lifecycle.settings import Settings
from lifecycle.state import Call, SessionIndex

log = logging.getLogger(__name__)
T = TypeVar('T')


@dataclass
class Turn:
    """One turn in flight: `seq` is the turn sequence it started from; `lease_lapsed` is set if a
    heartbeat found the busy lease gone (Redis unreachable for most of a lease), so the app knows the
    session was briefly unprotected."""

    session_id: str
    seq: int
    finished_seq: int | None = None
    lease_lapsed: bool = False


def new_token() -> str:
    """A fresh reservation or turn token."""
    return secrets.token_hex(12)


def redacted(url: str) -> str:
    """`url` without its password, for error messages and logs."""
    return re.sub(r'//([^:/@]*):[^@/]*@', r'//\1:***@', url)


@contextmanager
def unavailable_as_error(url: str) -> Iterator[None]:
    """Translate redis-py's connection failures into BackendUnavailable, naming the server."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BackendUnavailable(f'Redis at {redacted(url)} is unavailable: {exc}') from exc


class Lifecycle:
    """The session pool as an API replica sees it: reserve, activate, touch, turn, close, status.

    Thread-safe: one instance per process is enough (redis-py pools its connections).
    """

    def __init__(
        self, settings: Settings | None = None, *, redis_client: redis.Redis | None = None, clock: Clock | None = None
    ) -> None:
        self.settings = settings or Settings()
        self.redis = redis_client or redis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        self.index = SessionIndex(self.settings)
        self.clock = clock or RedisClock(self.settings.clock_refresh_s)
        self._scripts = {name: self.redis.register_script(source) for name, source in SOURCES.items()}

    @classmethod
    def from_env(cls) -> Lifecycle:
        """A client configured from LIFECYCLE_* environment variables."""
        return cls(Settings())

    def __enter__(self) -> Lifecycle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def disconnect(self) -> None:
        """Close the Redis connections."""
        self.redis.close()

    def now_ms(self) -> int:
        """Lifecycle time (Redis server time with a `RedisClock`), in epoch milliseconds."""
        clock = self.clock
        if isinstance(clock, RedisClock) and clock.needs_sync():
            with unavailable_as_error(self.settings.redis_url):
                sent_ns = time.monotonic_ns()
                server_time = self.redis.time()
                clock.observe(server_time, sent_ns, time.monotonic_ns())
        return clock.now_ms()

    def run(self, call: Call[T]) -> T:
        """Send one call to Redis and read its reply."""
        with unavailable_as_error(self.settings.redis_url):
            reply: Any
            if call.script is not None:
                reply = self._scripts[call.script](keys=call.keys, args=call.args)
            else:
                reply = self.redis.execute_command(*call.command)  # type: ignore[no-untyped-call]  # untyped in redis-py
        return call.parse(reply)

    # -- the public surface ------------------------------------------------------------------------

    def reserve(self, owner: str, tenant: str | None = None, *, token: str | None = None) -> Reservation:
        """Hold a slot for a session being created; raises CapacityExceeded when the pool or tenant is full.

        `token` is an idempotency key: reserving again with the same token returns the same
        reservation and never takes a second slot.
        """
        return self.run(self.index.reserve(owner, tenant, token or new_token(), self.now_ms()))

    def activate(
        self, reservation: Reservation, session_id: str, ttl_seconds: int | None = None, profile: str | None = None
    ) -> SessionInfo:
        """Turn `reservation` into live session `session_id`, ending hard at `expires_at`."""
        return self.run(self.index.activate(reservation, session_id, ttl_seconds, profile, self.now_ms()))

    def release(self, reservation: Reservation) -> bool:
        """Give back the slot of a reservation that will not be activated; idempotent."""
        return self.run(self.index.release(reservation))

    def touch(self, session_id: str) -> bool:
        """Stamp genuine activity (a user message, a turn start or end; never a poll). True if stamped."""
        return self.run(self.index.touch([session_id], self.now_ms())) == 1

    def touch_many(self, session_ids: Sequence[str]) -> int:
        """Stamp many sessions in one round trip; returns how many were live and stamped."""
        return self.run(self.index.touch(session_ids, self.now_ms()))

    @contextmanager
    def turn(self, session_id: str) -> Iterator[Turn]:
        """Hold the session busy while the body runs, renewing the busy lease from a heartbeat thread.

        Raises SessionNotLive or SessionReaping before the body runs. On exit the busy lease is
        dropped, the turn sequence bumped and activity stamped.
        """
        token = new_token()
        turn = Turn(session_id, self.run(self.index.begin_turn(session_id, token, self.now_ms())))

        def renew() -> None:
            if self.run(self.index.renew_turn(session_id, token, self.now_ms())) != 1:
                turn.lease_lapsed = True
                log.warning('turn on %s: busy lease had lapsed or the session left the pool', session_id)

        heartbeat = Repeater(f'turn-{session_id}', self.settings.busy_lease_s / 3, renew).start()
        body_failed = False
        try:
            yield turn
        except BaseException:
            body_failed = True
            raise
        finally:
            heartbeat.stop()
            try:
                turn.finished_seq = self.run(self.index.end_turn(session_id, token, self.now_ms()))
            except BackendUnavailable:
                # The busy lease runs out on its own; never hide the body's own exception.
                if not body_failed:
                    raise
                log.warning('turn on %s: could not record its end; the busy lease will lapse', session_id)

    def close(self, session_id: str) -> bool:
        """End a live session and give its slot back; False if it was not live."""
        return self.run(self.index.close(session_id))

    def status(self, session_id: str) -> SessionInfo | None:
        """The session as lifecycle sees it, without counting as activity; None if unknown."""
        return self.run(self.index.status(session_id, self.now_ms()))

    def stats(self) -> PoolStats:
        """Live, reserved, busy and reaping counts against the cap, read atomically."""
        return self.run(self.index.stats(self.now_ms()))

    def heartbeat(self, owner: str) -> None:
        """Announce that API replica `owner` is alive; its sessions are recovered if it stops."""
        self.run(self.index.heartbeat(owner, self.now_ms()))

    def start_heartbeat(self, owner: str) -> Repeater:
        """Heartbeat now, then every third of `replica_ttl_s` from a daemon thread; `stop()` it on shutdown."""
        self.heartbeat(owner)
        return Repeater(f'heartbeat-{owner}', self.settings.replica_ttl_s / 3, lambda: self.heartbeat(owner)).start()
