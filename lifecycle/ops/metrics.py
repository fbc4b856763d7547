"""The Prometheus exporter: the pool's own figures, read from Redis at every scrape.

Counters live in Redis (`{lc}:counters`) so every worker and API replica adds to the same ones; the
exporter only reads, so any number of exporters can run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from lifecycle.errors import BackendUnavailable
from lifecycle.pool import calls
from lifecycle.reaper.sweeps import DURATION_BUCKETS_S

if TYPE_CHECKING:
    from lifecycle.client import Lifecycle

log = logging.getLogger(__name__)


class PoolCollector(Collector):
    """Collects lifecycle_* metrics from one pool."""

    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily('lifecycle_redis_up', 'Whether the exporter could read the pool from Redis.')
        try:
            yield from self._pool()
        except BackendUnavailable as exc:
            log.warning('scrape failed: %s', exc)
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
        yield up

    def _pool(self) -> Iterator[Metric]:
        lc, keys = self.lc, self.lc.index.keys
        stats = lc.stats()
        now_ms = lc.now_ms()
        sessions = GaugeMetricFamily('lifecycle_sessions', 'Sessions in the pool by state (busy: live with a turn '
                                     'in flight; reserved: slots held for sessions being created).',
                                     labels=['state'])  # fmt: skip
        for state in ('live', 'busy', 'reserved', 'reaping'):
            sessions.add_metric([state], getattr(stats, state))
        yield sessions
        yield GaugeMetricFamily(
            'lifecycle_slots', 'The slot counter (live + reserved, by the sets).', value=stats.slots
        )
        yield GaugeMetricFamily('lifecycle_session_cap', 'The global session cap (max_sessions).', value=stats.cap)
        oldest = lc.pool.run(calls.by_score(keys.live, '-inf', '+inf', 1))
        idle_s = (now_ms - int(oldest[0][1])) / 1000 if oldest else 0.0
        yield GaugeMetricFamily('lifecycle_oldest_idle_seconds', 'Idle time of the least recently active session.',
                                value=idle_s)  # fmt: skip
        counters, sweeps, durations = lc.pool.run_many(
            [calls.hash_all(key) for key in (keys.counters, keys.sweep_stats, keys.sweep_durations)]
        )
        yield from self._counters({k: int(v) for k, v in counters.items()})
        yield from self._sweeps({k: int(float(v)) for k, v in sweeps.items()}, now_ms)
        yield self._durations({k: float(v) for k, v in durations.items()})

    @staticmethod
    def _durations(fields: dict[str, float]) -> Metric:
        """The shared histogram of sweep durations, by kind (buckets are cumulative, as recorded)."""
        histogram = HistogramMetricFamily('lifecycle_sweep_duration_seconds', 'How long sweeps take, by kind.',
                                          labels=['kind'])  # fmt: skip
        for kind in sorted({name.split('|', 1)[0] for name in fields}):
            buckets = [(f'{bound}', fields.get(f'{kind}|le|{bound}', 0.0)) for bound in DURATION_BUCKETS_S]
            count = fields.get(f'{kind}|count', 0.0)
            histogram.add_metric([kind], [*buckets, ('+Inf', count)], sum_value=fields.get(f'{kind}|sum', 0.0))
        return histogram

    @staticmethod
    def _counters(counters: dict[str, int]) -> Iterator[Metric]:
        evictions = CounterMetricFamily('lifecycle_evictions', 'Sessions taken out of the pool, by reason and outcome.',
                                        labels=['reason', 'outcome'])  # fmt: skip
        aborts = CounterMetricFamily('lifecycle_eviction_aborts', 'Evictions given up (the session stayed live).',
                                     labels=['reason', 'cause'])  # fmt: skip
        refusals = CounterMetricFamily('lifecycle_refusals', 'Reservations refused at the cap.', labels=['scope'])
        sweeps = CounterMetricFamily('lifecycle_sweeps', 'Sweeps run, by kind.', labels=['kind'])
        skipped = CounterMetricFamily('lifecycle_sweeps_skipped', 'Sweeps skipped (locked or duplicate).',
                                      labels=['kind'])  # fmt: skip
        damage = CounterMetricFamily('lifecycle_damage', 'Outside damage (a lost or edited key) met or repaired.',
                                     labels=['kind'])  # fmt: skip
        failed_starts = CounterMetricFamily('lifecycle_failed_starts', 'Reservations released because their sandbox '
                                            'failed to start (release(..., failed=True)).')  # fmt: skip
        failed_starts.add_metric([], counters.get('failed_start', 0))
        for name, value in sorted(counters.items()):
            head, _, rest = name.partition(':')
            if head == 'aborted':
                reason, _, cause = rest.partition(':')
                aborts.add_metric([reason, cause], value)
            elif head in ('evicted', 'expired', 'rolled_back', 'skipped'):
                evictions.add_metric([rest, head], value)
            elif head == 'damage':
                damage.add_metric([rest], value)
            elif head == 'refused':
                refusals.add_metric([rest], value)
            elif head == 'sweep':
                sweeps.add_metric([rest], value)
            elif head == 'sweep_skipped':
                skipped.add_metric([rest], value)
        yield from (evictions, aborts, refusals, sweeps, skipped, damage, failed_starts)

    @staticmethod
    def _sweeps(stats: dict[str, int], now_ms: int) -> Iterator[Metric]:
        lag = GaugeMetricFamily('lifecycle_sweep_lag_seconds', 'Time since a sweep of a kind last ran.',
                                labels=['kind'])  # fmt: skip
        for name, value in sorted(stats.items()):
            kind, _, field = name.rpartition(':')
            if field == 'last_ms':
                lag.add_metric([kind], max(0, now_ms - value) / 1000)
        yield lag


def registry_for(lc: Lifecycle) -> CollectorRegistry:
    """A registry holding only the pool's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(lc))
    return registry
