"""Sweeps read what is due, not the pool: the idle sweep's cursor per idle timeout and recheck set, the owner-lost
sweep's set per replica; on real Redis and the MongoDB-wire server, with what a lost key or a changed timeout does
to them."""

from __future__ import annotations

import pytest

from lifecycle import FixedClock, ProfilePolicy, Settings
from lifecycle.models import SessionState
from lifecycle.policy import Candidate
from lifecycle.reaper.eviction import Outcome
from lifecycle.reaper.sweeps import SweepKind
from tests.conftest import SettingsFactory
from tests.integration.conftest import ReaperFactory
from tests.integration.reaper import Reaper

SHORT = ProfilePolicy(idle_ttl_s=60, default_ttl_s=600, max_ttl_s=3_600)


@pytest.fixture
def store_kind() -> str:
    return 'mongo'


def profiled(make_reaper_settings: SettingsFactory, short: ProfilePolicy = SHORT) -> Settings:
    return make_reaper_settings(idle_ttl_s=1_800, default_ttl_s=7_200, max_ttl_s=86_400, profiles={'short': short})


@pytest.fixture
def read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every session an idle sweep reads (its candidates), in order."""
    from lifecycle.reaper.sweeps import Sweeper

    seen: list[str] = []
    original = Sweeper._candidates

    def counting(self: Sweeper, page: list[tuple[str, int]]) -> list[Candidate]:
        seen.extend(session_id for session_id, _ in page)
        return original(self, page)

    monkeypatch.setattr(Sweeper, '_candidates', counting)
    return seen


def open_sessions(r: Reaper, n: int, profile: str | None = None, prefix: str = 's') -> list[str]:
    ids = [f'{prefix}{i}' for i in range(n)]
    for session_id in ids:
        r.lc.activate(r.lc.reserve('api-1'), session_id, profile=profile)
    return ids


def test_with_an_unused_short_profile_a_sweep_with_nothing_due_reads_nothing(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, read: list[str]
) -> None:
    r = make_reaper(profiled(make_reaper_settings))
    open_sessions(r, 200)
    r.clock.advance(seconds=120)  # idle past the short profile's 60 s, far from the global 30 min
    first = r.sweep(SweepKind.IDLE)
    assert (first.ordered, len(read)) == (0, 200)  # the first sweep reads from the start, once
    for _ in range(5):
        read.clear()
        r.clock.advance(seconds=60)
        assert r.sweep(SweepKind.IDLE).ordered == 0
        assert read == []  # before the cursors, every one of them was read again, every sweep
    assert r.lc.stats().live == 200


def test_each_session_is_reaped_at_its_own_profiles_timeout(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, read: list[str]
) -> None:
    r = make_reaper(profiled(make_reaper_settings))
    short = open_sessions(r, 3, 'short', 'short-')
    default = open_sessions(r, 3, None, 'long-')
    r.clock.advance(seconds=61)
    assert sorted(o.session_id for o in r.sweep(SweepKind.IDLE).orders) == short
    r.clock.advance(seconds=60)
    read.clear()
    assert r.sweep(SweepKind.IDLE).ordered == 0
    assert set(read) <= set(short)  # the evicted ones leave the recheck set; the default sessions are not read
    r.lc.touch(default[0])  # active: its idle deadline moves
    r.clock.advance(seconds=1_800 - 121 + 1)
    assert sorted(o.session_id for o in r.sweep(SweepKind.IDLE).orders) == default[1:]
    r.clock.advance(seconds=121)
    assert [o.session_id for o in r.sweep(SweepKind.IDLE).orders] == [default[0]]
    assert r.lc.stats().live == 0


def test_a_kept_session_is_looked_at_again_until_it_can_go(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(profiled(make_reaper_settings).model_copy(update={'busy_lease_s': 600}))
    r.lc.activate(r.lc.reserve('api-1'), 'busy', ttl_seconds=3_000, profile='short')
    r.lc.pool.do(r.lc.flows.begin_turn('busy', 'turn-1', r.store))  # begun, never renewed nor ended
    r.clock.advance(seconds=120)
    assert r.sweep(SweepKind.IDLE).ordered == 0  # busy: kept
    r.clock.advance(seconds=600)  # its replica died mid-turn: the lease lapses untouched
    assert [o.session_id for o in r.sweep(SweepKind.IDLE).orders] == ['busy']
    assert r.results[-1].outcome is Outcome.EVICTED


def test_a_lost_recheck_set_or_cursor_makes_the_next_sweep_read_from_the_start(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(profiled(make_reaper_settings))
    keys = r.lc.index.keys
    for lost in (keys.idle_recheck, keys.idle_cursor):
        session_id = f'kept-{lost.rsplit(":", 1)[1]}'
        r.lc.activate(r.lc.reserve('api-1'), session_id, profile='short')
        with r.lc.turn(session_id):
            pass  # a finished turn no checkpoint covers: its eviction is refused
        r.clock.advance(seconds=120)
        r.sweep(SweepKind.IDLE)
        assert (r.results[-1].session_id, r.results[-1].detail) == (session_id, 'not_checkpointed')
        r.lc.redis.delete(lost)  # outside damage
        r.lc.checkpoint(session_id, {'saved': True})
        r.clock.advance(seconds=1)
        assert [o.session_id for o in r.sweep(SweepKind.IDLE).orders] == [session_id]
        assert r.results[-1].outcome is Outcome.EVICTED


def test_a_profile_whose_timeout_changed_is_judged_by_the_new_one(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    clock = FixedClock()
    r = make_reaper(profiled(make_reaper_settings, ProfilePolicy(idle_ttl_s=3_600)), clock)
    r.lc.activate(r.lc.reserve('api-1'), 'p1', profile='short')
    clock.advance(seconds=1_900)
    assert r.sweep(SweepKind.IDLE).ordered == 0  # past the global 30 min, not its profile's hour: passed over
    # A deploy shortens the profile to 10 min: the session, already behind every cursor, is due at once.
    redeployed = make_reaper(profiled(make_reaper_settings, ProfilePolicy(idle_ttl_s=600)), clock)
    clock.advance(seconds=1)
    assert [o.session_id for o in redeployed.sweep(SweepKind.IDLE).orders] == ['p1']
    assert redeployed.lc.status('p1').state is SessionState.RESUMABLE  # type: ignore[union-attr]


def test_owner_lost_reads_the_lost_replicas_sessions_not_the_pool(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lifecycle.pool.records import read_records
    from lifecycle.reaper import sweeps

    r = make_reaper(make_reaper_settings(max_sessions=1_000))
    keys = r.lc.index.keys
    for owner, n in (('api-1', 300), ('api-2', 5)):
        r.lc.heartbeat(owner)
        for i in range(n):
            r.lc.activate(r.lc.reserve(owner), f'{owner}-{i}')
    r.lc.close('api-2-4')
    r.lc.activate(r.lc.reserve('api-1'), 'api-2-4')  # the same id, now another replica's: api-2's entry is gone
    r.lc.redis.sadd(keys.owned('api-2'), 'api-1-0')  # a stale entry (outside damage): dropped, never evicted
    read: list[str] = []

    def counting(pool: object, ids: list[str]) -> list[str | None]:
        read.extend(ids)
        return read_records(pool, ids)  # type: ignore[arg-type]

    monkeypatch.setattr(sweeps, 'read_records', counting)
    r.clock.advance(seconds=r.lc.settings.replica_ttl_s)
    r.lc.heartbeat('api-1')  # api-2 died
    orders = r.sweep(SweepKind.OWNER_LOST).orders
    assert sorted(o.session_id for o in orders) == [f'api-2-{i}' for i in range(4)]
    assert sorted(read) == sorted([f'api-2-{i}' for i in range(4)] + ['api-1-0'])  # before: all 305 records
    assert not r.lc.redis.exists(keys.owned('api-2'))  # emptied as its sessions left
    assert r.lc.stats().live == 301
    r.sweep(SweepKind.OWNER_LOST)
    assert r.lc.redis.zscore(keys.replicas, 'api-2') is not None  # a missing set proves nothing here
    r.sweep(SweepKind.RECONCILE)
    assert r.lc.redis.zscore(keys.replicas, 'api-2') is None  # reconcile finds it owns nothing: forgotten
    assert r.lc.redis.zscore(keys.replicas, 'api-1') is not None


def test_reconcile_puts_back_an_owner_index_outside_damage_took(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = make_reaper(make_reaper_settings())
    for owner in ('api-1', 'api-2'):
        r.lc.heartbeat(owner)
        r.lc.activate(r.lc.reserve(owner), f'{owner}-s')
    r.lc.redis.delete(r.lc.index.keys.owned('api-2'))
    r.sweep(SweepKind.RECONCILE)
    r.clock.advance(seconds=r.lc.settings.replica_ttl_s)
    r.lc.heartbeat('api-1')
    assert [o.session_id for o in r.sweep(SweepKind.OWNER_LOST).orders] == ['api-2-s']
    assert r.results[-1].outcome is Outcome.EVICTED


def test_sessions_sharing_one_millisecond_are_all_read_while_the_first_ones_leave(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    """A readmit or a relink stamps many sessions in one millisecond. The sweep pages through such a tie by
    member, and the evictions of its first pages (gone from the live index meanwhile) make it skip none of the
    rest. Paged by offset, every eviction shifted one unread session past the sweep, and the idle cursor then
    moved past them for good."""
    r = make_reaper(profiled(make_reaper_settings).model_copy(update={'sweep_batch_size': 3, 'evict_batch_size': 2}))
    ids = ['A-1', 'a-2', 'B_3', 'b.4', 'Z@9', 'z+0', '0=x', '9:y', 'M-M', 'm-m', 'N', 'n']  # as Redis sorts bytes
    for session_id in ids:  # a FixedClock: every one is stamped in the same millisecond
        r.lc.activate(r.lc.reserve('api-1'), session_id, profile='short')
    r.clock.advance(seconds=61)
    assert sorted(o.session_id for o in r.sweep(SweepKind.IDLE).orders) == sorted(ids)
    assert {result.outcome for result in r.results} == {Outcome.EVICTED}
    assert r.lc.stats().live == 0


def test_a_session_whose_record_was_rebuilt_is_judged_by_the_global_timeout(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    """A stand-in record knows no profile: the global idle timeout judges the session from then on, though
    that timeout's pass went past it already (it was another profile's then)."""
    long = ProfilePolicy(idle_ttl_s=3_600, default_ttl_s=7_200, max_ttl_s=86_400)
    r = make_reaper(make_reaper_settings(idle_ttl_s=60, profiles={'long': long}))
    r.lc.activate(r.lc.reserve('api-1'), 'kept', profile='long')
    r.clock.advance(seconds=61)
    assert r.sweep(SweepKind.IDLE).ordered == 0  # idle past the global minute, not its profile's hour
    keys = r.lc.index.keys
    r.lc.redis.hdel(keys.meta_of('kept'), 'kept')  # outside damage: its record is gone
    assert r.sweep(SweepKind.RECONCILE).drift.records_rebuilt == 1  # type: ignore[union-attr]
    r.clock.advance(seconds=1)
    assert [o.session_id for o in r.sweep(SweepKind.IDLE).orders] == ['kept']  # before: passed over for good
    assert (r.results[-1].session_id, r.results[-1].detail) == ('kept', 'not_checkpointed')  # a stand-in's rule


@pytest.mark.parametrize(
    'damage', ['cursor ahead', 'cursor of another type', 'recheck set of another type', "a cursor of '²'"]
)
def test_an_idle_sweep_starts_over_from_damaged_cursors(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, damage: str
) -> None:
    """A cursor ahead of every clock (a hand edit, Redis's clock stepped back) stopped its pass until time
    caught up; a cursor hash or recheck set turned into another type failed every idle sweep (WRONGTYPE)."""
    r = make_reaper(profiled(make_reaper_settings))
    keys = r.lc.index.keys
    open_sessions(r, 2, 'short')
    r.clock.advance(seconds=30)
    assert r.sweep(SweepKind.IDLE).ordered == 0  # not idle yet: the cursors are written
    if damage == 'cursor ahead':
        r.lc.redis.hset(keys.idle_cursor, '60', 10**15)
    elif damage == "a cursor of '²'":  # str.isdigit() takes it, int() does not: the sweep raised ValueError
        r.lc.redis.hset(keys.idle_cursor, '60', '1²')
    else:
        damaged = keys.idle_cursor if damage == 'cursor of another type' else keys.idle_recheck
        r.lc.redis.delete(damaged)
        r.lc.redis.set(damaged, 'oops')
    r.clock.advance(seconds=31)
    assert sorted(o.session_id for o in r.sweep(SweepKind.IDLE).orders) == ['s0', 's1']
    assert r.lc.stats().live == 0
    open_sessions(r, 1, 'short', 'later-')  # and the sweeps after it read from the cursors again
    r.clock.advance(seconds=61)
    assert [o.session_id for o in r.sweep(SweepKind.IDLE).orders] == ['later-0']


def test_a_replica_lost_before_its_owner_set_is_put_back_is_recovered_after_reconcile(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    """A pool upgraded in place has no owner sets until its first reconcile. The owner-lost sweep used to forget
    a lost replica whose set it found missing, so after reconcile put the set back nobody recovered it."""
    r = make_reaper(make_reaper_settings())
    keys = r.lc.index.keys
    for owner in ('api-1', 'api-2'):
        r.lc.heartbeat(owner)
        r.lc.activate(r.lc.reserve(owner), f'{owner}-s')
    r.lc.redis.delete(keys.owned('api-2'))  # as the previous layout left it
    r.clock.advance(seconds=r.lc.settings.replica_ttl_s)
    r.lc.heartbeat('api-1')  # api-2 died
    assert r.sweep(SweepKind.OWNER_LOST).ordered == 0  # nothing to read yet
    r.sweep(SweepKind.RECONCILE)
    r.clock.advance(seconds=1)
    assert [o.session_id for o in r.sweep(SweepKind.OWNER_LOST).orders] == ['api-2-s']
    assert r.results[-1].outcome is Outcome.EVICTED


def test_a_reconcile_that_could_not_repair_every_page_forgets_no_replica(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a page refused (an OOM refusal, say) may hold sessions whose owner set is still missing;
    forgetting their lost replica then left them to their idle timeout."""
    from lifecycle.errors import ScriptFailed
    from lifecycle.pool.claims import ClaimIndex

    r = make_reaper(make_reaper_settings())
    keys = r.lc.index.keys
    r.lc.heartbeat('api-2')
    r.lc.activate(r.lc.reserve('api-2'), 'api-2-s')
    r.lc.redis.delete(keys.owned('api-2'))
    r.clock.advance(seconds=r.lc.settings.replica_ttl_s)
    original = ClaimIndex.repair_records

    def refusing(self: ClaimIndex, buckets: range, now_ms: int, fields: object = ()) -> object:
        if keys.meta_of('api-2-s') in {keys.meta_bucket(n) for n in buckets}:
            raise ScriptFailed('Redis refused repair_records: OOM command not allowed')
        return original(self, buckets, now_ms, fields)  # type: ignore[arg-type]

    with monkeypatch.context() as patched:
        patched.setattr(ClaimIndex, 'repair_records', refusing)
        assert r.sweep(SweepKind.RECONCILE).drift.unrepaired_pages == 1  # type: ignore[union-attr]
    assert r.lc.redis.zscore(keys.replicas, 'api-2') is not None
    r.sweep(SweepKind.RECONCILE)
    r.clock.advance(seconds=1)
    assert [o.session_id for o in r.sweep(SweepKind.OWNER_LOST).orders] == ['api-2-s']
