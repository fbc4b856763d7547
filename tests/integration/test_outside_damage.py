"""Outside damage (a lost key, a hand edit) on the real server: the cap holds, one damaged session never
strands the others, and reconcile repairs and reports what it found."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from lifecycle import CapacityExceeded, Lifecycle, LifecycleError, SessionExists, SessionState
from lifecycle.errors import PoolRecovering, SessionDamaged
from lifecycle.models import ReapReason
from lifecycle.reaper.eviction import Outcome
from lifecycle.reaper.sweeps import SweepKind
from lifecycle.sandboxes import ProcessDriver
from tests.conftest import SettingsFactory, connect_raw_redis, group_alive
from tests.integration.conftest import ReaperFactory
from tests.integration.reaper import Reaper


@pytest.fixture
def reaper(make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory) -> Reaper:
    return make_reaper(make_reaper_settings(max_sessions=5, tenant_max_sessions=2, idle_ttl_s=600))


def delete_keys(client: redis.Redis, lc: Lifecycle, *words: str) -> list[str]:
    """Delete every key of the pool whose name holds one of `words` (as an operator's typo would)."""
    doomed = [str(key) for key in client.scan_iter(match=lc.index.keys.prefix + '*')
              if any(word in str(key) for word in words)]  # fmt: skip
    assert doomed, f'no key holds {words}'
    client.delete(*doomed)
    return doomed


def fill(lc: Lifecycle) -> int:
    """Reserve until refused; returns how many were admitted."""
    admitted = 0
    while True:
        try:
            lc.reserve('api-1')
        except CapacityExceeded:
            return admitted
        admitted += 1


def in_pool(client: redis.Redis, lc: Lifecycle) -> int:
    return client.zcard(lc.index.keys.live) + client.zcard(lc.index.keys.reservations)


def test_a_lost_slot_counter_never_lets_the_pool_past_its_cap(reaper: Reaper, real_redis: redis.Redis) -> None:
    lc = reaper.lc
    for i in range(5):
        lc.activate(lc.reserve('api-1'), f's{i}')
    delete_keys(real_redis, lc, ':slots')
    assert lc.close('s0')  # each gives a slot back to a counter that is gone
    assert lc.close('s1')
    assert fill(lc) == 2
    assert in_pool(real_redis, lc) == 5
    report = reaper.sweep(SweepKind.RECONCILE)
    assert report.drift is not None
    assert report.drift.counter_missing
    assert lc.stats().slots == 5


def test_a_lowered_slot_counter_never_lets_the_pool_past_its_cap(reaper: Reaper, real_redis: redis.Redis) -> None:
    lc = reaper.lc
    for i in range(4):
        lc.activate(lc.reserve('api-1'), f's{i}')
    real_redis.set(lc.index.keys.slots, 0)  # a hand edit
    assert fill(lc) == 1
    assert in_pool(real_redis, lc) == 5
    report = reaper.sweep(SweepKind.RECONCILE)
    assert report.drift is not None
    assert report.drift.pool_drift == -4  # the edit took 4 away, and the admission after it added 1 back


def test_a_lost_tenant_count_refuses_the_tenant_until_reconciled_then_holds_its_cap(
    reaper: Reaper, real_redis: redis.Redis
) -> None:
    lc = reaper.lc
    lc.activate(lc.reserve('api-1', 'acme'), 'a1')
    lc.activate(lc.reserve('api-1', 'acme'), 'a2')
    delete_keys(real_redis, lc, 'tenant')
    for _ in range(3):  # acme already holds its cap of 2: no reservation of it may get through
        with pytest.raises(PoolRecovering) as recovering:
            lc.reserve('api-1', 'acme')
        assert recovering.value.retry_after_s > 0
    with pytest.raises(PoolRecovering):
        lc.reserve('api-1', 'globex')  # every capped tenant needs the index
    lc.reserve('api-1')  # the pool itself is counted from its sets: admissions without a tenant go on
    report = reaper.sweep(SweepKind.EXPIRED)  # notices the lost index and reconciles at once
    assert report.drift is not None
    assert report.drift.tenant_index_rebuilt
    with pytest.raises(CapacityExceeded) as full:
        lc.reserve('api-1', 'acme')
    assert (full.value.tenant, full.value.live, full.value.reserved, full.value.cap) == ('acme', 2, 0, 2)


def test_reconcile_reports_a_lost_tenant_count(reaper: Reaper, real_redis: redis.Redis) -> None:
    lc = reaper.lc
    lc.activate(lc.reserve('api-1', 'acme'), 'a1')
    lc.reserve('api-1', 'acme')
    delete_keys(real_redis, lc, 'tenant')
    report = reaper.sweep(SweepKind.RECONCILE)
    assert report.drift is not None
    assert report.drift.tenant_drift == 2
    again = reaper.sweep(SweepKind.RECONCILE)
    assert again.drift is not None
    assert not again.drift.found


def test_one_damaged_session_is_reported_and_the_rest_of_its_batch_is_evicted(
    reaper: Reaper, real_redis: redis.Redis
) -> None:
    lc = reaper.lc
    for i in range(5):
        lc.activate(lc.reserve('api-1'), f's{i}')
        lc.checkpoint(f's{i}', {'n': i})
    real_redis.zrem(lc.index.keys.deadline, 's2')  # a lost index entry
    reaper.clock.advance(seconds=600)
    reaper.sweep(SweepKind.IDLE)
    outcomes = {r.session_id: (r.outcome, r.detail) for r in reaper.results}
    assert outcomes.pop('s2') == (Outcome.KEPT, 'damaged')
    assert set(outcomes.values()) == {(Outcome.EVICTED, '')}
    stats = lc.stats()
    assert (stats.live, stats.reaping) == (1, 0)
    with pytest.raises(SessionDamaged, match='deadline'):
        lc.status('s2')

    report = reaper.sweep(SweepKind.RECONCILE)
    assert report.drift is not None
    assert report.drift.deadlines_restored == 1
    assert lc.status('s2').expires_at_ms > reaper.clock.now_ms()  # type: ignore[union-attr]
    reaper.sweep(SweepKind.IDLE)
    assert reaper.results[-1].outcome is Outcome.EVICTED


def snapshot(client: redis.Redis, lc: Lifecycle) -> dict[str, Any]:
    return {str(key): client.dump(key) for key in client.scan_iter(match=lc.index.keys.prefix + '*')}


def test_a_turn_on_a_session_without_its_record_writes_nothing(reaper: Reaper, real_redis: redis.Redis) -> None:
    lc = reaper.lc
    lc.activate(lc.reserve('api-1'), 's1')
    real_redis.hdel(lc.index.keys.meta_of('s1'), 's1')
    before = snapshot(real_redis, lc)
    with pytest.raises(LifecycleError), lc.turn('s1'):
        pass
    assert snapshot(real_redis, lc) == before  # no busy lease, no activity stamp: validated before writing
    with pytest.raises(SessionDamaged):
        lc.status('s1')
    report = reaper.sweep(SweepKind.RECONCILE)
    assert report.drift is not None
    assert report.drift.records_rebuilt == 1
    info = lc.status('s1')
    assert info is not None
    assert (info.state, info.turn_seq) == (SessionState.LIVE, 1)  # one past anything durable
    with lc.turn('s1') as turn:
        pass
    assert turn.finished_seq == 2


def test_a_claim_left_behind_without_its_fence_is_resolved_by_the_next_sweep(
    reaper: Reaper, real_redis: redis.Redis
) -> None:
    lc = reaper.lc
    lc.activate(lc.reserve('api-1'), 's1')
    k = lc.index.keys
    real_redis.zadd(k.reaping, {'s1': reaper.clock.now_ms()})  # a REAPING mark with no claim behind it
    reaper.clock.advance(seconds=1)
    report = reaper.sweep(SweepKind.IDLE)
    assert [(r.session_id, r.outcome) for r in report.recovered] == [('s1', Outcome.ROLLED_BACK)]
    assert lc.status('s1').state is SessionState.LIVE  # type: ignore[union-attr]
    with lc.turn('s1'):
        pass


def test_one_unreadable_sandbox_record_never_stops_the_expiry_sweep(
    make_reaper_settings: SettingsFactory,
    make_reaper: ReaperFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver = ProcessDriver(tmp_path)
    (tmp_path / 'a-broken.json').write_text(json.dumps({'pgid': 1}))  # sorts first; no deadline in it
    (tmp_path / 'b-garbage.json').write_text('{not json')
    pgid = driver.start('s1', ['sleep', '600'], ttl_s=600)
    record = json.loads((tmp_path / 's1.json').read_text())
    (tmp_path / 's1.json').write_text(json.dumps({**record, 'expires_at_ms': 0}))  # past its deadline
    r = make_reaper(make_reaper_settings(), driver=driver)
    report = r.sweep(SweepKind.EXPIRED)
    assert report.released_sandboxes == ['s1']
    deadline = time.monotonic() + 10
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(pgid)
    skipped = [m for m in caplog.messages if 'sandbox record' in m and 'skipped' in m]
    assert len(skipped) == 2
    assert 'a-broken.json' in skipped[0]


def test_a_session_whose_record_was_lost_still_counts_against_its_tenants_cap(
    reaper: Reaper, real_redis: redis.Redis
) -> None:
    """Found by the model: the stand-in record reconcile wrote had no tenant, so the tenant index dropped
    the session and its tenant was admitted past its cap."""
    lc = reaper.lc
    lc.activate(lc.reserve('api-1', 'globex'), 'g1')
    real_redis.hdel(lc.index.keys.meta_of('g1'), 'g1')
    reaper.sweep(SweepKind.RECONCILE)
    assert lc.status('g1').tenant == 'globex'  # type: ignore[union-attr]
    lc.reserve('api-1', 'globex')
    with pytest.raises(CapacityExceeded):
        lc.reserve('api-1', 'globex')


def test_a_session_whose_record_and_tenant_index_were_both_lost_counts_against_every_capped_tenant(
    reaper: Reaper, real_redis: redis.Redis
) -> None:
    """Found by the model: with nothing left that knows the session's tenant, its stand-in record had none,
    and its tenant was admitted past its cap. Not knowing, the pool now counts it against every tenant."""
    lc = reaper.lc
    lc.activate(lc.reserve('api-1', 'globex'), 'g1')
    real_redis.hdel(lc.index.keys.meta_of('g1'), 'g1')
    delete_keys(real_redis, lc, 'tenant')
    reaper.sweep(SweepKind.EXPIRED)  # notices the lost index and reconciles
    assert str(real_redis.hget(lc.index.keys.meta_of('g1'), 'g1')).split('|')[1] == '?'
    assert lc.status('g1').tenant is None  # type: ignore[union-attr]  # to the app: none known
    held = []
    for tenant in ('globex', 'acme'):
        held.append(lc.reserve('api-1', tenant))
        with pytest.raises(CapacityExceeded):
            lc.reserve('api-1', tenant)
    for reservation in held:
        lc.release(reservation)
    # It stays a session like any other: checkpointed, evicted, restored (with no tenant: none is known).
    lc.checkpoint('g1', {'v': 1})
    reaper.clock.advance(seconds=600)
    reaper.sweep(SweepKind.IDLE)
    assert lc.status('g1').state is SessionState.RESUMABLE  # type: ignore[union-attr]
    assert lc.restore('g1', 'api-2').session.tenant is None
    lc.reserve('api-1', 'acme')  # no longer filed under '?': the tenants have their room back
    lc.reserve('api-1', 'acme')


def test_a_tenant_index_lost_while_reconcile_runs_is_not_marked_complete(
    reaper: Reaper, real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    lc = reaper.lc
    lc.activate(lc.reserve('api-1', 'acme'), 'a1')
    lc.activate(lc.reserve('api-1', 'acme'), 'a2')
    from lifecycle.reaper.reconcile import Reconciler

    run = Reconciler.repair

    def run_while_the_index_is_deleted(self: Reconciler, extend: Any) -> Any:
        def extend_and_delete() -> None:
            real_redis.delete(lc.index.keys.tenants)  # a hand, in the middle of the passes
            extend()

        return run(self, extend_and_delete)

    monkeypatch.setattr(Reconciler, 'repair', run_while_the_index_is_deleted)
    reaper.sweep(SweepKind.RECONCILE)
    monkeypatch.undo()
    with pytest.raises(PoolRecovering):
        lc.reserve('api-1', 'acme')
    reaper.sweep(SweepKind.EXPIRED)  # reconciles again, undisturbed
    with pytest.raises(CapacityExceeded):
        lc.reserve('api-1', 'acme')


def test_a_malformed_record_or_bucket_never_stops_a_sweep(reaper: Reaper, real_redis: redis.Redis) -> None:
    lc = reaper.lc
    for i in range(3):
        lc.activate(lc.reserve('api-1'), f's{i}')
        lc.checkpoint(f's{i}', {'n': i})
    k = lc.index.keys
    real_redis.hset(k.meta_of('s1'), 's1', 'junk')  # a hand edit
    spare = next(n for n in range(100) if k.meta_bucket(n) not in {k.meta_of(f's{i}') for i in range(3)})
    real_redis.set(k.meta_bucket(spare), 'not a hash')
    real_redis.delete(k.tenants)
    reaper.clock.advance(seconds=600)
    expired = reaper.sweep(SweepKind.EXPIRED)
    assert expired.drift is not None
    assert expired.drift.malformed_records == 2  # the record and the bucket, reported
    assert expired.drift.records_rebuilt == 1  # the unreadable record got a stand-in
    reaper.sweep(SweepKind.IDLE)
    outcomes = {r.session_id: (r.outcome, r.detail) for r in reaper.results}
    assert outcomes['s0'] == outcomes['s2'] == (Outcome.EVICTED, '')
    assert outcomes['s1'] == (Outcome.ABORTED, 'not_checkpointed')  # its stand-in needs a new checkpoint
    lc.checkpoint('s1', {'n': 1})
    reaper.sweep(SweepKind.IDLE)
    assert reaper.results[-1].outcome is Outcome.EVICTED


def test_activation_never_takes_over_a_live_session_that_lost_its_record(
    reaper: Reaper, real_redis: redis.Redis
) -> None:
    lc = reaper.lc
    lc.activate(lc.reserve('api-1', 'acme'), 's1')
    real_redis.hdel(lc.index.keys.meta_of('s1'), 's1')
    second = lc.reserve('api-2', 'globex')
    with pytest.raises(SessionExists):
        lc.activate(second, 's1')
    assert lc.release(second)
    assert in_pool(real_redis, lc) == 1


def test_a_counter_edited_into_a_non_integer_never_stops_admissions(reaper: Reaper, real_redis: redis.Redis) -> None:
    lc = reaper.lc
    lc.activate(lc.reserve('api-1'), 's1')
    real_redis.set(lc.index.keys.slots, '1.0')
    assert fill(lc) == 4
    assert lc.close('s1')
    report = reaper.sweep(SweepKind.RECONCILE)
    assert report.drift is not None
    assert lc.stats().slots == in_pool(real_redis, lc) == 4


def test_upgrading_a_pool_with_tenant_counters_builds_the_index_without_calling_it_damage(
    reaper: Reaper, real_redis: redis.Redis
) -> None:
    lc = reaper.lc
    lc.activate(lc.reserve('api-1', 'acme'), 'a1')
    real_redis.delete(lc.index.keys.tenants)  # as the previous layout left it: counters, no index
    real_redis.hset(lc.index.keys.legacy_tenant_slots, 'acme', 1)
    report = reaper.sweep(SweepKind.RECONCILE)
    assert report.drift is not None
    assert not report.drift.found
    assert not real_redis.exists(lc.index.keys.legacy_tenant_slots)
    lc.reserve('api-1', 'acme')
    with pytest.raises(CapacityExceeded):
        lc.reserve('api-1', 'acme')


def test_an_entry_no_session_could_be_never_stops_a_sweep_and_reconcile_removes_it(
    reaper: Reaper, real_redis: redis.Redis
) -> None:
    lc = reaper.lc
    lc.activate(lc.reserve('api-1'), 's1')
    lc.checkpoint('s1', {'v': 1})
    raw = connect_raw_redis()  # bytes in, as a foreign writer would
    raw.zadd(lc.index.keys.live, {b'\xff\xfe not utf-8': 0, b'bad id': 0})
    raw.close()
    reaper.clock.advance(seconds=600)
    reaper.sweep(SweepKind.IDLE)  # neither entry can be claimed; the real session is evicted
    assert [(r.session_id, r.outcome) for r in reaper.results if r.outcome is Outcome.EVICTED] == [
        ('s1', Outcome.EVICTED)
    ]
    report = reaper.sweep(SweepKind.RECONCILE)
    assert report.drift is not None
    assert report.drift.foreign_entries == 2
    assert lc.stats().live == 0


@pytest.mark.parametrize('index', ['reaping', 'unsaved', 'busy', 'orphans'])
def test_a_member_that_is_not_utf8_in_any_index_never_stops_a_sweep_and_reconcile_removes_it(
    reaper: Reaper, real_redis: redis.Redis, index: str
) -> None:
    # Regression: sent back to Redis as it was read, such a member raised UnicodeEncodeError (hiredis encodes
    # strictly): one in `reaping` stopped every idle, LRU, expiry and owner-lost sweep for good, one in
    # `unsaved` every reconcile, one in `orphans` every expiry sweep.
    lc = reaper.lc
    lc.activate(lc.reserve('api-1'), 's1')
    lc.checkpoint('s1', {'v': 1})
    raw = connect_raw_redis()
    raw.zadd(getattr(lc.index.keys, index), {b'\xff\xfe not utf-8': 0})  # a lease long run out, say
    raw.close()
    reaper.clock.advance(seconds=600)
    reaper.sweep(SweepKind.IDLE)
    reaper.sweep(SweepKind.EXPIRED)
    assert [(r.session_id, r.outcome) for r in reaper.results] == [('s1', Outcome.EVICTED)]
    report = reaper.sweep(SweepKind.RECONCILE)
    assert report.drift is not None
    assert report.drift.foreign_entries == 1
    assert real_redis.zcard(getattr(lc.index.keys, index)) == 0


def test_an_empty_pool_whose_counter_was_set_by_hand_still_admits_capped_tenants(
    reaper: Reaper, real_redis: redis.Redis
) -> None:
    """Found by the model: the tenant index was marked complete only along with a counter created on an empty
    pool, so a counter written first by hand left capped tenants refused (PoolRecovering) until a sweep."""
    real_redis.set(reaper.lc.index.keys.slots, 0)
    assert reaper.lc.reserve('api-1', 'acme').tenant == 'acme'


def test_an_eviction_whose_record_is_lost_before_it_finishes_leaves_no_tenant_member_behind(
    reaper: Reaper, real_redis: redis.Redis
) -> None:
    # Regression: the finish fell back on the claim's tenant as the app sees it, which hides '?': the '?' member
    # of a stand-in session was left in the index, counting against every capped tenant until reconcile.
    lc = reaper.lc
    lc.activate(lc.reserve('api-1', 'acme'), 'a1', ttl_seconds=60)
    keys = lc.index.keys
    real_redis.hdel(keys.meta_of('a1'), 'a1')
    real_redis.delete(keys.tenants)
    reaper.sweep(SweepKind.RECONCILE)  # a stand-in record filed under '?'
    assert str(real_redis.hget(keys.meta_of('a1'), 'a1')).split('|')[1] == '?'
    reaper.clock.advance(seconds=61)
    [claim] = lc.pool.run_many([reaper.evictor.claims.claim('a1', ReapReason.EXPIRED, lc.now_ms())])
    assert not isinstance(claim, str)
    real_redis.hdel(keys.meta_of('a1'), 'a1')  # lost again, mid-eviction
    assert [r.outcome for r in reaper.evictor._complete({0: claim}).values()] == [Outcome.EXPIRED]
    assert [m for m in real_redis.zrange(keys.tenants, 0, -1) if '|' in m] == []
    lc.reserve('api-1', 'acme')
    lc.reserve('api-1', 'acme')  # both of acme's slots are free


def test_reconcile_of_a_large_pool_repairs_a_few_records_a_script(
    reaper: Reaper, real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 1,000,000 sessions a meta bucket holds about 61 records: one script each held Redis for a millisecond
    and more. Reconcile then repairs a bucket SCRIPT_PAGE records a script, named, with the same results."""
    from lifecycle.pool.claims import ClaimIndex
    from lifecycle.reaper import reconcile

    monkeypatch.setattr(reconcile, 'MAX_BUCKETS', 1)  # one bucket a page, as in a large pool
    monkeypatch.setattr(reconcile, 'SCRIPT_PAGE', 2)
    lc = reaper.lc
    k = lc.index.keys
    lc.heartbeat('api-1')
    crowded = k.meta_of('anchor')
    ids = [s for s in (f's{i}' for i in range(200_000)) if k.meta_of(s) == crowded][:5]
    for session_id in ids:
        lc.activate(lc.reserve('api-1'), session_id)
    real_redis.zrem(k.live, ids[0], ids[1])  # records without their live entries
    real_redis.zrem(k.deadline, ids[2])
    real_redis.delete(k.owned('api-1'))
    real_redis.hset(crowded, ids[4], 'junk')  # a hand edit
    spare = next(n for n in range(100) if k.meta_bucket(n) != crowded)
    real_redis.set(k.meta_bucket(spare), 'not a hash')
    scripts: list[int] = []
    original = ClaimIndex.repair_records

    def counting(self: ClaimIndex, buckets: Any, now_ms: int, fields: Any = ()) -> Any:
        scripts.append(len(fields))
        return original(self, buckets, now_ms, fields)

    monkeypatch.setattr(ClaimIndex, 'repair_records', counting)
    drift = reaper.sweep(SweepKind.RECONCILE).drift
    assert drift is not None
    assert (drift.relinked, drift.deadlines_restored, drift.malformed_records, drift.records_rebuilt) == (2, 1, 2, 1)
    assert (max(scripts), scripts.count(2)) == (2, 2)  # the crowded bucket: three scripts (2 + 2 + 1 records)
    assert real_redis.smembers(k.owned('api-1')) == set(ids[:4])  # the stand-in of ids[4] has no owner
    assert lc.stats().live == 5


def test_a_member_that_is_not_utf8_closing_a_page_of_a_tie_never_stops_a_sweep(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    # Regression (review of the tie paging): the last member of a full page goes back to Redis to page on through
    # its tie; sent as a str with surrogates it raised UnicodeEncodeError, and the idle, expiry, LRU and warnings
    # sweeps stopped until reconcile removed it. An owner set holding one stopped every owner-lost sweep.
    reaper = make_reaper(make_reaper_settings(max_sessions=5, idle_ttl_s=600, sweep_batch_size=2, max_live=1))
    lc, keys = reaper.lc, reaper.lc.index.keys
    lc.heartbeat('api-1')
    lc.activate(lc.reserve('api-1'), 's1')
    lc.checkpoint('s1', {'v': 1})
    raw = connect_raw_redis()
    for index in (keys.live, keys.deadline):
        raw.zadd(index, {b'\xff\xfe not utf-8': float(raw.zscore(index, 's1') or 0)})  # tied with s1, after it
    raw.sadd(keys.owned('api-1'), b'\xff\xfe not utf-8')
    raw.close()
    reaper.clock.advance(seconds=601)
    assert reaper.sweep(SweepKind.IDLE).ordered == 1
    assert [(r.session_id, r.outcome) for r in reaper.results] == [('s1', Outcome.EVICTED)]
    for kind in (SweepKind.LRU, SweepKind.WARNINGS, SweepKind.EXPIRED):
        assert reaper.sweep(kind).ran
    reaper.clock.advance(seconds=lc.settings.replica_ttl_s)
    assert reaper.sweep(SweepKind.OWNER_LOST).ordered == 0  # s1 left; the foreign entry is dropped
    assert lc.redis.scard(keys.owned('api-1')) == 0


@pytest.mark.parametrize('record', ['api-1|||²|0', 'api-1|||1|0|\u0661\u0662', 'api-1|||1|0|'])
def test_a_record_hand_edited_with_non_ascii_digits_is_damage_not_a_crash(
    reaper: Reaper, real_redis: redis.Redis, record: str
) -> None:
    """Python's str.isdigit() takes '²' and Arabic-Indic digits that int() refuses (or reads as a number the
    scripts never wrote): status() raised ValueError and the reconcile sweep stopped on it."""
    lc = reaper.lc
    lc.activate(lc.reserve('api-1'), 's1')
    real_redis.hset(lc.index.keys.meta_of('s1'), 's1', record)
    with pytest.raises(SessionDamaged):
        lc.status('s1')
    report = reaper.sweep(SweepKind.RECONCILE)
    assert report.drift is not None
    assert report.drift.records_rebuilt == 1
    assert lc.status('s1') is not None
