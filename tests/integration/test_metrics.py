"""The exporter's metrics follow Prometheus conventions, and the Grafana dashboard queries only what it serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lifecycle import CapacityExceeded
from lifecycle.ops.metrics import registry_for
from lifecycle.reaper.sweeps import SweepKind
from tests.conftest import SettingsFactory
from tests.integration.conftest import ReaperFactory
from tests.integration.reaper import Reaper

DASHBOARD = Path(__file__).parents[2] / 'deploy' / 'grafana' / 'lifecycle-dashboard.json'


@pytest.fixture
def busy_pool(make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory) -> Reaper:
    """A pool that went through everything a dashboard shows: sweeps, evictions, aborts, refusals, damage."""
    r = make_reaper(make_reaper_settings(max_sessions=3, idle_ttl_s=60))
    for name in ('saved', 'unsaved', 'fresh'):
        r.lc.activate(r.lc.reserve('api-1'), name)
    r.lc.checkpoint('saved', {'v': 1})
    with r.lc.turn('unsaved'):
        pass
    with pytest.raises(CapacityExceeded):
        r.lc.reserve('api-1')
    r.lc.redis.delete(r.lc.index.keys.slots)
    r.clock.advance(seconds=61)
    for kind in (SweepKind.IDLE, SweepKind.EXPIRED, SweepKind.RECONCILE):
        r.sweep(kind)
    r.sweeper.sweep(SweepKind.RUNS)
    assert r.sweeper.sweep(SweepKind.RUNS).skipped == 'duplicate'  # as a redelivered message would be
    return r


def served(r: Reaper) -> dict[str, str]:
    """Every sample name the exporter serves, with its family's type."""
    text = generate_latest(registry_for(r.lc)).decode()
    return {sample.name: family.type for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_follow_prometheus_conventions(busy_pool: Reaper) -> None:
    samples = served(busy_pool)
    assert {'lifecycle_sessions', 'lifecycle_session_cap', 'lifecycle_slots', 'lifecycle_evictions_total',
            'lifecycle_sweep_duration_seconds_bucket', 'lifecycle_damage_total'} <= set(samples)  # fmt: skip
    for name, kind in samples.items():
        assert name.startswith('lifecycle_'), name
        if kind == 'counter':
            assert name.endswith(('_total', '_created')), name
        else:
            assert not name.endswith('_total'), name
    text = generate_latest(registry_for(busy_pool.lc)).decode()
    assert 'lifecycle_sessions{state="live"} 1.0' in text  # 'unsaved' stays (its owner was asked to checkpoint)
    assert 'lifecycle_sweep_duration_seconds_count{kind="idle"} 1.0' in text
    assert 'lifecycle_damage_total{kind="pool_counter"} 1.0' in text


def test_every_dashboard_query_names_a_metric_the_exporter_serves(busy_pool: Reaper) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target['expr'] for panel in dashboard['panels'] for target in panel['targets']]
    assert len(queries) >= 10
    names = set(served(busy_pool))
    for query in queries:
        for metric in re.findall(r'\blifecycle_[a-z_]+', query):
            assert metric in names, f'{metric} in {query!r} is not served'
