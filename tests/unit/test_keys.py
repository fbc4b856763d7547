from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lifecycle.pool.keys import META_BUCKETS, Keys
from lifecycle.validate import MAX_ID_LENGTH

# Every id the validator accepts (see lifecycle.validate), weighted towards the separators.
ids = st.from_regex(rf'[A-Za-z0-9][A-Za-z0-9._:@=+-]{{0,{MAX_ID_LENGTH - 1}}}', fullmatch=True) | st.sampled_from(
    ['a', 'a:events', 'events', 'a:b', 'r1:events:x', 'terminal', 'runs:terminal', 'meta', '7']
)


def test_every_key_name_is_pinned() -> None:
    k = Keys.for_prefix('lc')
    assert {
        'live': k.live,
        'deadline': k.deadline,
        'busy': k.busy,
        'turns': k.turns,
        'meta_of': k.meta_of('chat-1'),
        'meta_bucket': k.meta_bucket(7),
        'meta_bucket_prefix': k.meta_bucket_prefix,
        'legacy_meta': k.legacy_meta,
        'legacy_tenant_slots': k.legacy_tenant_slots,
        'migrations': k.migrations,
        'unsaved': k.unsaved,
        'sweep_durations': k.sweep_durations,
        'reaping': k.reaping,
        'claims': k.claims,
        'reservations': k.reservations,
        'slots': k.slots,
        'tenants': k.tenants,
        'epoch': k.epoch,
        'replicas': k.replicas,
        'inbox': k.inbox('api-1'),
        'owned': k.owned('api-1'),
        'lock': k.lock('idle'),
        'orphans': k.orphans,
        'warn_cursor': k.warn_cursor,
        'idle_cursor': k.idle_cursor,
        'idle_recheck': k.idle_recheck,
        'swept': k.swept('idle'),
        'counters': k.counters,
        'sweep_stats': k.sweep_stats,
        'runs_terminal': k.runs_terminal,
        'run': k.run('r1'),
        'run_events': k.run_events('r1'),
        'worktrees': k.worktrees,
        'cleaning': k.cleaning,
    } == {
        'live': '{lc}:live',
        'deadline': '{lc}:deadline',
        'busy': '{lc}:busy',
        'turns': '{lc}:turns',
        'meta_of': '{lc}:meta:10980',  # crc32('chat-1') = 930540260, % 16384
        'meta_bucket': '{lc}:meta:7',
        'meta_bucket_prefix': '{lc}:meta:',
        'legacy_meta': '{lc}:meta',
        'legacy_tenant_slots': '{lc}:tenant_slots',
        'migrations': '{lc}:migrations',
        'unsaved': '{lc}:unsaved',
        'sweep_durations': '{lc}:sweep_durations',
        'reaping': '{lc}:reaping',
        'claims': '{lc}:claims',
        'reservations': '{lc}:reservations',
        'slots': '{lc}:slots',
        'tenants': '{lc}:tenants',
        'epoch': '{lc}:epoch',
        'replicas': '{lc}:replicas',
        'inbox': '{lc}:inbox:api-1',
        'owned': '{lc}:owned:api-1',
        'lock': '{lc}:lock:idle',
        'orphans': '{lc}:orphans',
        'warn_cursor': '{lc}:warn_cursor',
        'idle_cursor': '{lc}:idle_cursor',
        'idle_recheck': '{lc}:idle_recheck',
        'swept': '{lc}:swept:idle',
        'counters': '{lc}:counters',
        'sweep_stats': '{lc}:sweep_stats',
        'runs_terminal': '{lc}:runs:terminal',
        'run': '{lc}:run:r1',
        'run_events': '{lc}:run_events:r1',
        'worktrees': '{lc}:worktrees',
        'cleaning': '{lc}:cleaning',
    }


def test_every_key_shares_one_hash_tag() -> None:
    k = Keys.for_prefix('tenant-a')
    names = [getattr(k, name) for name in dir(Keys) if isinstance(getattr(Keys, name), property)]
    assert names
    assert all(name.startswith('{tenant-a}:') for name in names)


def test_meta_buckets_spread_sessions_and_share_the_hash_tag() -> None:
    k = Keys.for_prefix('tenant-a')
    buckets = {k.meta_of(f'session-{i}') for i in range(1_000)}
    assert all(bucket.startswith('{tenant-a}:meta:') for bucket in buckets)
    assert all(0 <= int(bucket.rsplit(':', 1)[1]) < META_BUCKETS for bucket in buckets)
    assert len(buckets) > 950  # 1,000 ids over 16,384 buckets: few collisions
    assert k.meta_of('chat-1') == k.meta_of('chat-1')


@given(ids, ids)
def test_no_two_ids_name_the_same_key(a: str, b: str) -> None:
    """A run's keys, an inbox, a lock: whatever two valid ids are, their keys are distinct (a run `a` and a
    run `a:events` once shared the events stream of one with the hash of the other)."""
    k = Keys.for_prefix('lc')
    fixed = {getattr(k, name) for name in dir(Keys) if isinstance(getattr(Keys, name), property)}
    of_a = [k.run(a), k.run_events(a), k.inbox(a)]
    of_b = [k.run(b), k.run_events(b), k.inbox(b)]
    assert len(set(of_a)) == len(of_a)
    assert not fixed & set(of_a)
    if a != b:
        assert not set(of_a) & set(of_b)
