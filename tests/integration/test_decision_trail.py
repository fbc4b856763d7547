"""The decision trail (issue 16): why a session was kept or reaped, and what last stamped it, on real Redis and
the MongoDB-wire server, through both clients."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aredis

from lifecycle import AsyncLifecycle, SessionState, Trail
from lifecycle.models import ReapReason, SweepKind
from lifecycle.pool.claims import ClaimIndex
from lifecycle.reaper.eviction import Outcome
from tests.conftest import REDIS_URL, SettingsFactory, connect_raw_redis
from tests.integration.conftest import ReaperFactory

pytestmark = pytest.mark.integration


def decided(trail: object) -> list[tuple[str, str, str, int]]:
    assert trail is not None
    return [(d.decision, d.reason, d.detail, d.count) for d in trail.decisions]  # type: ignore[attr-defined]


def test_the_trail_says_why_a_session_was_kept_then_reaped_and_what_stamped_it(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(
        make_reaper_settings(
            max_sessions=3, idle_ttl_s=600, busy_lease_s=3600, on_missing_checkpoint='keep', trail_sources=True
        )
    )
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 's1')
    assert lc.trail('s1').source == 'activate@api-1'  # type: ignore[union-attr]
    with lc.turn('s1'):
        r.clock.advance(seconds=601)
        r.sweep(SweepKind.IDLE)  # idle past its timeout, but a turn holds it
        r.clock.advance(seconds=60)
        r.sweep(SweepKind.IDLE)
        assert decided(lc.trail('s1')) == [('kept', 'idle', 'busy', 2)]  # a repeat is counted, not repeated
    assert lc.trail('s1').source == 'turn_end@api-1'  # type: ignore[union-attr]

    r.clock.advance(seconds=601)
    r.sweep(SweepKind.IDLE)  # a finished turn no checkpoint covers: its owner is asked, the session kept
    assert decided(lc.trail('s1')) == [('kept', 'idle', 'busy', 2), ('aborted', 'idle', 'not_checkpointed', 1)]
    lc.pin('s1')
    r.clock.advance(seconds=60)
    r.sweep(SweepKind.IDLE)
    assert decided(lc.trail('s1'))[-1] == ('kept', 'idle', 'pinned', 1)
    lc.unpin('s1')
    lc.checkpoint('s1', {'done': 1})
    r.clock.advance(seconds=60)
    r.sweep(SweepKind.IDLE)
    assert [(x.session_id, x.outcome) for x in r.results][-1] == ('s1', Outcome.EVICTED)
    assert lc.redis.hexists(lc.pool.keys.trail, 's1') == 0  # its trail left the pool with it ...

    after = lc.trail('s1')  # ... into MongoDB, with the eviction
    assert decided(after) == [('kept', 'idle', 'busy', 2), ('aborted', 'idle', 'not_checkpointed', 1),
                              ('kept', 'idle', 'pinned', 1)]  # fmt: skip
    assert after.source == 'turn_end@api-1'  # type: ignore[union-attr]
    assert lc.status('s1').state is SessionState.RESUMABLE  # type: ignore[union-attr]
    assert lc.trail('nobody') is None


def test_the_trail_is_capped_and_leaves_with_its_session(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, trail_length=2))
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 's1')
    with lc.turn('s1'):
        pass
    assert lc.redis.hlen(lc.pool.keys.trail) == 0  # sources off (the default): no trail until a decision
    append = r.evictor._record  # the evictor's own path for a decision
    from lifecycle.models import ReapReason
    from lifecycle.reaper.eviction import EvictionResult

    for detail in ('busy', 'moved', 'not_due', 'not_due'):
        append([EvictionResult('s1', ReapReason.LRU, Outcome.KEPT, detail)])
    assert decided(lc.trail('s1')) == [('kept', 'lru', 'moved', 1), ('kept', 'lru', 'not_due', 2)]
    lc.close('s1')
    assert lc.redis.hlen(lc.pool.keys.trail) == 0


def test_touch_sources_name_the_replica_and_the_trail_can_be_off(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, trail_sources=True, replica_id='api-2'))
    lc = r.lc
    for name in ('s1', 's2'):
        lc.activate(lc.reserve('api-1'), name)
    r.clock.advance(ms=5)
    assert lc.touch('s1') is True
    assert lc.trail('s1').source == 'touch@api-2'  # type: ignore[union-attr]
    r.clock.advance(ms=5)
    assert lc.touch_many(['s1', 's2', 'gone']) == 2
    assert lc.trail('s2').source == 'touch@api-2'  # type: ignore[union-attr]
    assert lc.redis.hexists(lc.pool.keys.trail, 'gone') == 0  # no trail for a session that is not live

    prefix = lc.settings.key_prefix + 'x'
    off = make_reaper(make_reaper_settings(max_sessions=3, trail_length=0, busy_lease_s=7200, key_prefix=prefix))
    off.lc.activate(off.lc.reserve('api-1'), 't1')  # another pool, on the same database
    with off.lc.turn('t1'):
        off.clock.advance(seconds=3600)
        off.sweep(SweepKind.IDLE)  # kept busy: not recorded
        assert off.lc.trail('t1') == Trail('', ())  # live, nothing recorded
    assert off.lc.redis.exists(off.lc.pool.keys.trail) == 0
    for key in off.lc.redis.scan_iter(match=off.lc.pool.keys.prefix + '*'):  # its pool is not the fixture's
        off.lc.redis.delete(key)


def test_the_async_client_reads_the_trail(make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, trail_sources=True))

    async def run() -> str:
        client = aredis.Redis.from_url(REDIS_URL, decode_responses=True)
        async with AsyncLifecycle(r.lc.settings, redis_client=client, clock=r.clock) as lc:
            await lc.activate(await lc.reserve('api-1'), 's1')
            trail = await lc.trail('s1')
            assert trail is not None
            return trail.source

    assert asyncio.run(run()) == 'activate@api-1'


def test_a_recovered_expiry_keeps_the_trail_and_reconcile_drops_trails_of_sessions_gone(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings(max_sessions=3, busy_lease_s=3600, claim_lease_s=60))
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=100)
    with lc.turn('s1'):
        r.clock.advance(seconds=1900)  # idle past the 30 min default, kept busy
        r.sweep(SweepKind.IDLE)
    assert decided(lc.trail('s1')) == [('kept', 'idle', 'busy', 1)]
    # A worker claims it for expiry and dies; the next sweep's recovery completes the expiry.
    now = r.clock.now_ms()
    claims = ClaimIndex(lc.settings, lc.pool.keys)
    assert not isinstance(lc.pool.run(claims.claim('s1', ReapReason.EXPIRED, now, 0, 0)), str)
    r.clock.advance(seconds=61)
    r.sweep(SweepKind.EXPIRED)
    assert lc.status('s1').state is SessionState.EXPIRED  # type: ignore[union-attr]
    assert decided(lc.trail('s1')) == [('kept', 'idle', 'busy', 1)]  # the takeover carried it to MongoDB

    lc.redis.hset(lc.pool.keys.trail, 'ghost', ';1,kept,idle,busy,1')  # outside damage: a hand edit, bytes too
    with connect_raw_redis() as raw:
        raw.hset(lc.pool.keys.trail, b'odd\xff', b'x')
    r.sweep(SweepKind.RECONCILE)
    assert lc.redis.hlen(lc.pool.keys.trail) == 0
