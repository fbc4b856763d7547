"""Finished-run retention, on fakeredis and on the real server."""

from __future__ import annotations

import pytest
import redis

from lifecycle import FixedClock, Lifecycle
from lifecycle.errors import InvalidArgument, RunStateError
from lifecycle.jobs.runs import RunStatus
from tests.conftest import SettingsFactory


@pytest.fixture
def lc(make_settings: SettingsFactory, redis_client: redis.Redis, fixed_clock: FixedClock) -> Lifecycle:
    settings = make_settings(run_retention_s=300, max_finished_runs=3, max_events_per_run=5)
    return Lifecycle(settings, redis_client=redis_client, clock=fixed_clock)


def finished_run(lc: Lifecycle, run_id: str, status: RunStatus = RunStatus.COMPLETED) -> None:
    lc.runs.start(run_id)
    lc.runs.append(run_id, {'frame': run_id})
    assert lc.runs.finish(run_id, status)


def test_a_run_buffers_a_capped_stream_of_frames_for_replay(lc: Lifecycle) -> None:
    lc.runs.start('r1', session_id='chat-1')
    ids = [lc.runs.append('r1', {'n': n, 'text': 'x' * n}) for n in range(8)]
    frames = lc.runs.replay('r1')
    assert [f.data['n'] for f in frames] == [3, 4, 5, 6, 7]  # capped at max_events_per_run
    assert [f.data['n'] for f in lc.runs.replay('r1', after=ids[5])] == [6, 7]
    info = lc.runs.info('r1')
    assert info is not None
    assert (info.status, info.session_id, info.finished_ms) == (RunStatus.RUNNING, 'chat-1', None)
    with pytest.raises(InvalidArgument, match='JSON'):
        lc.runs.append('r1', {'not': object()})


def test_the_finish_time_is_stamped_once_on_the_first_terminal_transition(
    lc: Lifecycle, fixed_clock: FixedClock
) -> None:
    lc.runs.start('r1')
    assert lc.runs.finish('r1', 'cancelled') is True
    finished_at = fixed_clock.now_ms()
    fixed_clock.advance(seconds=100)
    assert lc.runs.finish('r1', RunStatus.COMPLETED) is False
    info = lc.runs.info('r1')
    assert info is not None
    assert (info.status, info.finished_ms) == (RunStatus.CANCELLED, finished_at)
    with pytest.raises(RunStateError, match='not running'):
        lc.runs.append('r1', {'late': True})
    with pytest.raises(InvalidArgument):
        lc.runs.finish('r1', RunStatus.RUNNING)


def test_finished_runs_are_kept_within_the_window_and_dropped_after(lc: Lifecycle, fixed_clock: FixedClock) -> None:
    finished_run(lc, 'r1', RunStatus.FAILED)
    fixed_clock.advance(seconds=299)
    assert lc.runs.prune() == []
    assert [f.data for f in lc.runs.replay('r1')] == [{'frame': 'r1'}]  # a late reconnect still replays
    fixed_clock.advance(seconds=1)
    assert lc.runs.prune() == ['r1']
    assert lc.runs.info('r1') is None
    assert lc.runs.replay('r1') == []


def test_the_cap_drops_the_oldest_finish_first_and_running_runs_never(lc: Lifecycle, fixed_clock: FixedClock) -> None:
    lc.runs.start('still-running')
    for i in range(5):
        finished_run(lc, f'r{i}')
        fixed_clock.advance(seconds=1)
    assert [run for run in lc.redis.zrange(lc.index.keys.runs_terminal, 0, -1)] == ['r2', 'r3', 'r4']
    assert lc.runs.info('r0') is None
    assert lc.runs.info('r1') is None
    fixed_clock.advance(seconds=3600)
    assert sorted(lc.runs.prune()) == ['r2', 'r3', 'r4']
    info = lc.runs.info('still-running')
    assert info is not None
    assert info.status is RunStatus.RUNNING
    lc.runs.append('still-running', {'ok': True})


def test_a_run_starts_again_after_its_old_one_was_dropped(lc: Lifecycle, fixed_clock: FixedClock) -> None:
    finished_run(lc, 'conversation-1')
    with pytest.raises(RunStateError):
        lc.runs.append('conversation-1', {})
    fixed_clock.advance(seconds=301)
    lc.runs.prune()
    lc.runs.start('conversation-1')
    lc.runs.append('conversation-1', {'second': True})
    assert [f.data for f in lc.runs.replay('conversation-1')] == [{'second': True}]
    with pytest.raises(RunStateError, match='already running'):
        lc.runs.start('conversation-1')


def test_a_finished_runs_keys_expire_on_their_own_as_a_backstop(lc: Lifecycle) -> None:
    finished_run(lc, 'r1')
    k = lc.index.keys
    for key in (k.run('r1'), k.run_events('r1')):
        assert 0 < lc.redis.pttl(key) <= (300 + 60) * 1000
    lc.runs.start('r2')
    lc.runs.append('r2', {})
    assert lc.redis.pttl(k.run('r2')) == -1  # running runs never expire


def test_a_run_whose_id_extends_another_runs_id_never_touches_its_keys(lc: Lifecycle) -> None:
    lc.runs.start('a')
    lc.runs.append('a', {'n': 1})
    lc.runs.append('a', {'n': 2})
    lc.runs.start('a:events')  # its keys once were run a's event stream
    lc.runs.append('a:events', {'n': 3})
    info = lc.runs.info('a')
    assert info is not None
    assert info.status is RunStatus.RUNNING
    assert [f.data['n'] for f in lc.runs.replay('a')] == [1, 2]
    assert [f.data['n'] for f in lc.runs.replay('a:events')] == [3]
    assert lc.runs.finish('a', 'completed')
    assert [f.data['n'] for f in lc.runs.replay('a:events')] == [3]
