"""Fixtures of the integration tests: reapers assembled on real Redis and MongoDB, closed afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lifecycle import FixedClock, Settings
from lifecycle.sandboxes import SandboxDriver
from tests.integration.reaper import Reaper, build_reaper

ReaperFactory = Callable[..., Reaper]


@pytest.fixture
def make_reaper(real_redis: Any) -> Iterator[ReaperFactory]:
    built: list[Reaper] = []

    def make(settings: Settings, clock: FixedClock | None = None, driver: SandboxDriver | None = None) -> Reaper:
        reaper = build_reaper(settings, clock, driver)
        built.append(reaper)
        return reaper

    yield make
    for reaper in built:
        if reaper.store is not None:
            reaper.store.close()
        reaper.lc.disconnect()
