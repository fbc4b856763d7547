"""Beat's scheduler: RedBeat, riding out a Redis restart or failover, and saying when it takes and loses the lead."""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, RedBeatScheduler, get_redis  # type: ignore[import-untyped]
from redis.exceptions import LockError, RedisError

from lifecycle.pool.executor import CONNECTION_ERRORS, not_taking_writes

log = logging.getLogger(__name__)


class LeaderScheduler(RedBeatScheduler):  # type: ignore[misc]  # an untyped base
    """RedBeat's scheduler, made to outlive Redis's outages.

    Celery's beat exits on any exception a tick raises, and RedBeat's tick raises when Redis cannot be reached
    (a restart, a failover) and, after it, when its lock is gone (Redis restarted empty, or this beat paused
    past the lock's timeout); RedBeat also writes its schedule only at start. Here a tick that cannot reach
    Redis tries again after `max_interval`; a beat whose lock is gone stands by and takes the lock again once
    it is free; and the leader installs the schedule again when Redis lost it. Its clock is Redis's.
    """

    lock: Any = None  # redis-py's Lock while this beat leads (RedBeat's beat_init handler takes the first)

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        # The schedule runs on Redis's clock (TIME), not this host's: beats whose clocks disagree then agree on
        # when a sweep is due, and one taking over from another neither stalls nor sends a burst.
        self.behind = timedelta(0)  # Redis's clock minus this host's, as of the last tick
        local_now = app.now
        app.now = lambda: local_now() + self.behind
        with contextlib.suppress(*CONNECTION_ERRORS):  # down, restarting, failing over
            self._read_the_clock(app)
        super().__init__(app, *args, **kwargs)

    def _read_the_clock(self, app: Any) -> None:
        seconds, micros = get_redis(app).time()
        self.behind = datetime.fromtimestamp(seconds + micros / 1e6, UTC) - datetime.now(UTC)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            self._read_the_clock(self.app)
            if self.lock_key and self.lock is None and not self._lead():
                return float(self.max_interval)  # another beat leads
            wait: float = super().tick(*args, **kwargs)  # extends the lock first: only a leader goes on
            self._install_if_lost()
        except LockError:
            log.warning('beat: lost the RedBeat lock %s (Redis lost it, or this beat paused past its timeout); it '
                        'leads again once it holds the lock', self.lock_key)  # fmt: skip
            self.lock = None
            return float(self.max_interval)
        except RedisError as exc:
            if not not_taking_writes(exc):
                raise  # a refusal of another kind is not an outage
            log.warning('beat: Redis cannot be reached or takes no writes (%s); trying again in %s s', exc,
                        self.max_interval)  # fmt: skip
            return float(self.max_interval)
        return wait

    def _lead(self) -> bool:
        """Take the lock if it is free (never waiting: a tick must return); whether this beat leads now."""
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)  # RedBeat's: extend *to* the timeout
        if not lock.acquire(blocking=False):
            return False
        log.info('beat: took the RedBeat lock %s; this beat leads the schedule', self.lock_key)
        self.lock = lock
        self._install_if_lost()
        return True

    def _install_if_lost(self) -> None:
        """RedBeat's schedule keys are written at start only: a Redis that restarted empty has none to send."""
        if not get_redis(self.app).exists(self.app.redbeat_conf.statics_key):
            log.warning('beat: the schedule is gone from Redis (it restarted empty, or was flushed); installing it')
            self.setup_schedule()
