from __future__ import annotations

from typing import Any

import pytest

from lifecycle import policy
from lifecycle.models import Limits, ReapReason
from lifecycle.policy import Candidate, Order

NOW = 1_000_000_000


def limits(profile: str | None) -> Limits:
    return Limits(idle_ttl_s=600 if profile == 'short' else 3600, default_ttl_s=900, max_ttl_s=86_400)


def candidate(session_id: str, idle_s: int, *, profile: str | None = None, busy_s: int | None = None,
              reaping: bool = False, pinned: bool = False) -> Candidate:  # fmt: skip
    busy = NOW + busy_s * 1000 if busy_s is not None else None
    return Candidate(session_id, NOW - idle_s * 1000, 'api-1', profile, busy, reaping, pinned)


@pytest.mark.parametrize(
    ('idle_s', 'profile', 'busy_s', 'reaping', 'due'),
    [
        (3600, None, None, False, True),  # exactly at the idle timeout
        (3599, None, None, False, False),
        (600, 'short', None, False, True),  # a profile's own, shorter timeout
        (599, 'short', None, False, False),
        (7200, None, 10, False, False),  # busy: never idle-reaped
        (7200, None, -1, False, True),  # a busy lease that ran out does not protect
        (7200, None, 0, False, True),  # a lease ending now has ended
        (7200, None, None, True, False),  # already being reaped
    ],
)
def test_idle_orders(idle_s: int, profile: str | None, busy_s: int | None, reaping: bool, due: bool) -> None:
    orders = policy.idle_orders([candidate('s', idle_s, profile=profile, busy_s=busy_s, reaping=reaping)], limits, NOW)
    if due:
        cutoff = NOW - limits(profile).idle_ttl_s * 1000
        assert orders == [Order('s', ReapReason.IDLE, idle_cutoff_ms=cutoff, observed_ms=NOW - idle_s * 1000)]
    else:
        assert orders == []


def test_a_pinned_session_is_kept_by_the_idle_sweep_and_passed_over_by_lru_saying_why() -> None:
    sessions = [
        candidate('pinned', 7200, pinned=True),
        candidate('busy', 7200, busy_s=10),
        candidate('recent', 60, pinned=True),
        candidate('due', 7200),
        candidate('going', 7200, reaping=True),
    ]
    assert [o.session_id for o in policy.idle_orders(sessions, limits, NOW)] == ['due']
    assert policy.idle_kept(sessions, limits, NOW) == [('pinned', 'pinned'), ('busy', 'busy')]
    assert [o.session_id for o in policy.lru_orders(sessions, 5, 1, NOW)] == ['due']


@pytest.mark.parametrize(('live', 'reaping', 'max_live', 'excess'), [(10, 0, 8, 2), (10, 2, 8, 0), (5, 0, 8, 0)])
def test_lru_excess_counts_sessions_already_going(live: int, reaping: int, max_live: int, excess: int) -> None:
    assert policy.lru_excess(live, reaping, max_live) == excess


def test_lru_orders_take_the_least_recent_non_busy_sessions_first() -> None:
    oldest_first = [candidate('a', 90, busy_s=5), candidate('b', 80), candidate('c', 70, reaping=True),
                    candidate('d', 60), candidate('e', 50)]  # fmt: skip
    orders = policy.lru_orders(oldest_first, 2, 100, NOW)
    assert [(o.session_id, o.reason, o.bound) for o in orders] == [
        ('b', ReapReason.LRU, 100),
        ('d', ReapReason.LRU, 100),
    ]
    assert policy.lru_orders(oldest_first, 0, 100, NOW) == []


@pytest.mark.parametrize(
    ('cursor', 'expected'),
    [
        (None, (NOW - 3600_000, NOW - 3300_000)),  # first run: one warn_before window back
        (NOW - 3400_000, (NOW - 3400_000, NOW - 3300_000)),  # from where the last sweep stopped
        (NOW - 9000_000, (NOW - 3600_000, NOW - 3300_000)),  # never sessions already past their deadline
    ],
)
def test_warning_window(cursor: int | None, expected: tuple[int, int]) -> None:
    assert policy.warning_window(cursor, NOW, 3600, 300) == expected


@pytest.mark.parametrize(
    ('document', 'token', 'durable'),
    [
        ({'state': 'resumable', 'fence': 7}, 7, True),
        ({'state': 'resumable', 'fence': 6}, 7, False),  # an older eviction's write
        ({'state': 'live', 'fence': 7}, 7, False),
        (None, 7, False),
    ],
)
def test_is_durably_evicted(document: dict[str, object] | None, token: int, durable: bool) -> None:
    assert policy.is_durably_evicted(document, token) is durable


def verdict_of(**overrides: Any) -> policy.Verdict:
    base: dict[str, Any] = {
        'now_ms': NOW, 'last_active_ms': NOW - 100_000, 'expires_at_ms': NOW + 3_600_000, 'busy': False,
        'reaping': False, 'idle_ttl_s': 1800, 'turn_seq': 2, 'checkpoint_seq': 2, 'requested_ms': None,
        'required': True, 'waive_after_s': 600,
    }  # fmt: skip
    return policy.verdict(**{**base, **overrides})


@pytest.mark.parametrize(
    ('overrides', 'due', 'says'),
    [
        ({}, None, 'idle for 100 s, due at 30 min of idle (its profile): in 28 min'),
        ({'last_active_ms': NOW - 2_000_000}, 'idle', 'the next idle sweep evicts it'),
        ({'last_active_ms': NOW - 2_000_000, 'busy': True}, None, 'a turn holds a busy lease'),
        ({'last_active_ms': NOW - 2_000_000, 'checkpoint_seq': 1}, None, 'its owner has not been asked yet'),
        ({'last_active_ms': NOW - 2_000_000, 'checkpoint_seq': 1, 'requested_ms': NOW - 60_000}, None,
         'asked 60 s ago; evicted anyway in 9 min'),
        ({'last_active_ms': NOW - 2_000_000, 'checkpoint_seq': 1, 'requested_ms': NOW - 60_000, 'waive_after_s': None},
         None, 'kept until it answers'),
        ({'last_active_ms': NOW - 2_000_000, 'checkpoint_seq': None, 'turn_seq': 0}, 'idle', 'evicts it'),
        ({'expires_at_ms': NOW - 5_000}, 'expired', 'past its hard deadline by 5 s'),
        ({'reaping': True}, None, 'being evicted right now'),
        # Regressions: inspect said "due: idle" with persistence off, and "kept" for a session whose owner was lost.
        ({'last_active_ms': NOW - 2_000_000, 'persistence': False}, None, 'only its hard deadline ends it'),
        ({'owner_lost': True}, 'owner_lost', 'the next owner-lost sweep evicts it'),
        ({'owner_lost': True, 'busy': True}, None, 'due (owner_lost), but a turn holds a busy lease'),
        ({'owner_lost': True, 'checkpoint_seq': 1}, None, 'due (owner_lost), but 1 finished turn(s)'),
    ],
)  # fmt: skip
def test_the_verdict_says_why_a_session_is_kept_or_what_it_is_due_for(
    overrides: dict[str, Any], due: str | None, says: str
) -> None:
    found = verdict_of(**overrides)
    assert found.due == due
    assert any(says in reason for reason in found.reasons), found.reasons
