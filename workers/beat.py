"""Beat's scheduler: RedBeat, saying when this beat takes and loses the lead."""

from __future__ import annotations

import logging
from typing import Any

from redbeat import RedBeatScheduler  # type: ignore[import-untyped]  # ships no type information
from redis.exceptions import LockError

log = logging.getLogger(__name__)


class LeaderScheduler(RedBeatScheduler):  # type: ignore[misc]  # an untyped base
    """RedBeat's scheduler; a beat that loses its lock (it paused past the lock's timeout, or Redis lost the
    key) says so in its log before it stops, so an operator sees why the standby took over."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            wait: float = super().tick(*args, **kwargs)
        except LockError:
            log.error('beat: lost the RedBeat lock %s: another beat leads the schedule now; stopping', self.lock_key)
            raise
        return wait
