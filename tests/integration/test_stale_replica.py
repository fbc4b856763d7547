"""Issue 18, hole 1: a replica that paused (SIGSTOP) while its session was evicted and restored elsewhere must not
overwrite the new owner's state when it resumes. Its checkpoint carries the tenure (the fencing token of the
activation it came from); MongoDB takes only a checkpoint of the session's current tenure. Every other write it
makes on the session's behalf (touch, turn, extend, pin, unpin, close) is refused in Redis the same way: the
session's record there holds its current tenure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from lifecycle import FixedClock, Lifecycle, SessionState, Settings
from lifecycle.errors import Fenced
from lifecycle.models import ReapReason, SweepKind
from lifecycle.ops.embedded import owned_env
from lifecycle.sandboxes import NoopDriver
from lifecycle.steps import Done, advance
from lifecycle.stores.mongo import MongoSnapshotStore, Plans
from tests.conftest import SettingsFactory
from tests.integration.conftest import ReaperFactory
from tests.integration.reaper import Reaper

REPLICA_A = """
import sys
from lifecycle import Lifecycle
from lifecycle.errors import Fenced
with Lifecycle() as lc:
    info = lc.activate(lc.reserve('api-a'), 's1', ttl_seconds=3600)
    lc.checkpoint('s1', {'by': 'A', 'turns': 0}, [{'id': 'm1', 'text': 'hello'}], tenure=info.tenure)
    print(info.tenure, flush=True)
    sys.stdin.readline()  # paused here (SIGSTOP) while the session is evicted and restored by B
    try:
        lc.checkpoint('s1', {'by': 'A', 'turns': 1}, [{'id': 'm1', 'text': 'hello'}, {'id': 'm2', 'text': 'A, late'}],
                      tenure=info.tenure)
        print('written', flush=True)
    except Fenced as refused:
        print('fenced:', refused, flush=True)
"""


@dataclass
class Paused:
    """Replica A, a real process, SIGSTOPped after printing its tenure of s1; s1 then evicted by a reaper on
    Redis's time, 601 s on (A's busy lease long lapsed)."""

    process: subprocess.Popen[str]
    tenure: int
    reaper: Reaper

    def resume(self) -> str:
        """SIGCONT A, let it go on, and return the line it prints."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self.process.stdin.write('go\n')
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        self.process.wait(30)
        assert line, self.process.stderr.read() if self.process.stderr else ''
        return line.strip()


@contextmanager
def paused_replica(script: str, settings: Settings, make_reaper: ReaperFactory) -> Iterator[Paused]:
    pipe = subprocess.PIPE
    with subprocess.Popen([sys.executable, '-c', script], env=owned_env(settings), text=True,
                          stdin=pipe, stdout=pipe, stderr=pipe) as a:  # fmt: skip
        try:
            assert a.stdout is not None
            tenure = int(a.stdout.readline())
            os.kill(a.pid, signal.SIGSTOP)
            r = make_reaper(settings)
            r.clock = FixedClock(r.lc.pool.server_ms())  # the reaper's time: now, by Redis
            r.lc.pool.clock = r.clock
            r.clock.advance(seconds=601)
            assert r.evictor.evict('s1', ReapReason.IDLE, r.clock.now_ms()).outcome.value == 'evicted'
            yield Paused(a, tenure, r)
        finally:
            if a.poll() is None:
                os.kill(a.pid, signal.SIGCONT)
                a.kill()
                a.wait(10)


def test_a_replica_paused_across_an_eviction_and_a_restore_cannot_overwrite_the_new_owner(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    with paused_replica(REPLICA_A, make_reaper_settings(idle_ttl_s=600), make_reaper) as a:
        r = a.reaper
        restored = r.lc.restore('s1', 'api-b')  # B takes it over and runs a turn
        assert restored.session.tenure is not None
        assert restored.session.tenure > a.tenure
        with r.lc.turn('s1'):
            pass
        b_messages = [{'id': 'm1', 'text': 'hello'}, {'id': 'm2', 'text': 'B, turn 1'}]
        r.lc.checkpoint('s1', {'by': 'B', 'turns': 1}, b_messages, tenure=restored.session.tenure)
        outcome = a.resume()
        print(f'\nreplica A (tenure {a.tenure}) resumed after B restored (tenure {restored.session.tenure}): {outcome}')
        assert outcome.startswith('fenced:'), outcome
        document = r.document('s1') or {}
        assert document['snapshot'] == {'by': 'B', 'turns': 1}  # MongoDB holds B's state
        assert r.store is not None
        assert r.store.messages('s1') == b_messages


REPLICA_A_EVERY_WRITE = """
import json, sys
from lifecycle import Lifecycle
from lifecycle.errors import Fenced, LifecycleError
with Lifecycle() as lc:
    info = lc.activate(lc.reserve('api-a'), 's1', ttl_seconds=3600)
    lc.checkpoint('s1', {'by': 'A'}, tenure=info.tenure)
    t = info.tenure
    outcomes = {}
    with lc.turn('s1') as turn:  # a turn in flight, its tenure taken from the session: paused mid-turn
        print(t, flush=True)
        sys.stdin.readline()  # SIGSTOPped here while the session is evicted, restored by B, and B runs a turn
    outcomes['turn in flight ended'] = turn.finished_seq
    calls = {
        'touch': lambda: lc.touch('s1', tenure=t),
        'turn': lambda: lc.turn('s1', tenure=t).__enter__(),
        'extend': lambda: lc.extend('s1', 7200, tenure=t),
        'pin': lambda: lc.pin('s1', tenure=t),
        'unpin': lambda: lc.unpin('s1', tenure=t),
        'checkpoint': lambda: lc.checkpoint('s1', {'by': 'A, late'}, tenure=t),
        'close': lambda: lc.close('s1', tenure=t),
    }
    for name, call in calls.items():
        try:
            outcomes[name] = repr(call())
        except Fenced as refused:
            outcomes[name] = 'fenced: ' + str(refused)
        except LifecycleError as other:
            outcomes[name] = type(other).__name__ + ': ' + str(other)
    print(json.dumps(outcomes), flush=True)
"""


def test_every_write_of_a_replica_paused_across_an_eviction_and_a_restore_is_refused(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    """A paused mid-turn; B restores the session and runs a turn; A resumes: its turn's end and lease renewals touch
    nothing of B's life, and its touch, turn, extend, pin, unpin, checkpoint and close are each refused (Fenced)."""
    settings = make_reaper_settings(idle_ttl_s=600, busy_lease_s=3)
    with paused_replica(REPLICA_A_EVERY_WRITE, settings, make_reaper) as a:
        r = a.reaper
        restored = r.lc.restore('s1', 'api-b')
        tenure_b = restored.session.tenure
        assert tenure_b is not None
        assert tenure_b > a.tenure
        with r.lc.turn('s1', tenure=tenure_b):
            pass
        r.lc.checkpoint('s1', {'by': 'B'}, tenure=tenure_b)
        before = r.lc.status('s1')
        assert before is not None
        outcomes = json.loads(a.resume())
        print(f'\nreplica A (tenure {a.tenure}) resumed after B restored (tenure {tenure_b}):')
        for name, outcome in outcomes.items():
            print(f'  {name}: {outcome}')
        assert outcomes.pop('turn in flight ended') is None  # its end bumped nothing of B's life
        assert {name: outcome.split(':')[0] for name, outcome in outcomes.items()} == dict.fromkeys(outcomes, 'fenced')
        assert set(outcomes) == {'touch', 'turn', 'extend', 'pin', 'unpin', 'checkpoint', 'close'}
        after = r.lc.status('s1')  # B's session, exactly as B left it
        assert after is not None
        assert (after.owner, after.tenure, after.turn_seq, after.busy, after.pinned) == (
            'api-b', tenure_b, before.turn_seq, False, False)  # fmt: skip
        assert (after.last_active_ms, after.expires_at_ms) == (before.last_active_ms, before.expires_at_ms)
        document = r.document('s1') or {}
        assert (document['state'], document['snapshot'], document['tenure']) == ('live', {'by': 'B'}, tenure_b)


def drive(plan: Any, store: MongoSnapshotStore, step: Any, stop_before: str | None = None) -> Any:
    """Run a store plan's operations on `store` as the store runs them, from `step`, until the next one is
    `stop_before` (returned) or the plan ends (None)."""
    while not isinstance(step, Done):
        if step.method == stop_before:
            return step
        step = store.step(plan, step)
    return None


def test_a_stale_checkpoint_that_passed_its_check_before_the_restore_counts_for_nothing(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    """A paused between its check and its writes: its new message lands, one over B's is refused, its document
    write never comes, and nothing it wrote is visible; B's messages are never overwritten."""
    r = make_reaper(make_reaper_settings(idle_ttl_s=600))
    store = r.store
    assert isinstance(store, MongoSnapshotStore)
    info = r.lc.activate(r.lc.reserve('api-a'), 's1', ttl_seconds=3600)
    r.lc.checkpoint('s1', {'by': 'A'}, [{'id': 'm1', 'text': 'hello'}], tenure=info.tenure)
    messages = [{'id': 'm9', 'text': 'A only'}, {'id': 'm2', 'text': 'A'}]
    order = r.lc.pool.run(r.lc.index.next_token())
    stale = Plans.checkpoint_plan('s1', {'by': 'A, late'}, messages, 1, order, info.tenure)
    paused_at = drive(stale, store, advance(stale), stop_before='bulk_write')  # A checked: its tenure; it pauses
    assert paused_at is not None
    r.clock.advance(seconds=601)
    assert r.evictor.evict('s1', ReapReason.IDLE, r.clock.now_ms()).outcome.value == 'evicted'
    restored = r.lc.restore('s1', 'api-b')
    b_messages = [{'id': 'm1', 'text': 'hello'}, {'id': 'm2', 'text': 'B'}]
    r.lc.checkpoint('s1', {'by': 'B'}, b_messages, tenure=restored.session.tenure)
    with pytest.raises(Fenced):  # A resumes
        drive(stale, store, paused_at)
    assert store.messages('s1') == b_messages  # m9 landed, and counts for nothing
    assert store.message_docs.count_documents({'session_id': 's1', 'message_id': 'm9'}) == 1
    assert (r.document('s1') or {})['snapshot'] == {'by': 'B'}


class PausedBefore:
    """A's store: its first call to `method` waits (A paused between its Redis activation and its durable write)
    until `go` is set; every other call is the real store's."""

    def __init__(self, store: Any, method: str) -> None:
        self.store, self.method = store, method
        self.reached, self.go = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.store, name)
        if name != self.method or self.reached.is_set():
            return real

        def paused(*args: Any) -> Any:
            self.reached.set()
            assert self.go.wait(30)
            return real(*args)

        return paused


def make_resumable(r: Reaper) -> None:
    """s1 activated, checkpointed and evicted: resumable."""
    r.lc.activate(r.lc.reserve('api-0'), 's1', ttl_seconds=3600)
    r.lc.checkpoint('s1', {'by': 'first'})
    r.clock.advance(seconds=601)
    assert r.evictor.evict('s1', ReapReason.IDLE, r.clock.now_ms()).outcome.value == 'evicted'


@contextmanager
def paused_before_its_record(r: Reaper, path: str) -> Iterator[list[BaseException]]:
    """Replica A (a thread) activates or restores s1, and is paused before MongoDB records it while the block runs;
    then it goes on. Yields what A ended with (filled once the block is left)."""
    store = PausedBefore(r.store, 'activated' if path == 'activate' else 'restore')
    a = Lifecycle(r.lc.settings, clock=r.clock, store=store, driver=NoopDriver())
    failures: list[BaseException] = []

    def replica_a() -> None:
        try:
            if path == 'activate':
                a.activate(a.reserve('api-a'), 's1', ttl_seconds=3600)
            else:
                a.restore('s1', 'api-a')
        except BaseException as error:  # the test reads it
            failures.append(error)

    thread = threading.Thread(target=replica_a)
    thread.start()
    try:
        assert store.reached.wait(30)
        yield failures
    finally:
        store.go.set()
        thread.join(30)
        a.disconnect()


@pytest.mark.parametrize('path', ['activate', 'restore'])
def test_a_replica_paused_before_its_durable_activation_write_leaves_the_new_owner_s_session_alone(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, path: str
) -> None:
    """A activates (or restores) s1 in Redis and pauses before MongoDB records it; meanwhile s1 is evicted and B
    restores it. A resumes: MongoDB refuses A's stale write, and A's undo must not close B's session (it closed
    it: B's life ended in Redis while MongoDB still held it live)."""
    r = make_reaper(make_reaper_settings(idle_ttl_s=600))
    if path == 'restore':
        make_resumable(r)
    with paused_before_its_record(r, path) as failures:
        if path == 'activate':  # never checkpointed: its eviction still leaves it resumable, fenced above A
            r.lc.checkpoint('s1', {'by': 'A, through the pool'})
        r.clock.advance(seconds=601)
        assert r.evictor.evict('s1', ReapReason.IDLE, r.clock.now_ms()).outcome.value == 'evicted'
        restored = r.lc.restore('s1', 'api-b')
    assert len(failures) == 1
    print(f'\nreplica A, resumed after B restored s1: {type(failures[0]).__name__}: {failures[0]}')
    held = r.lc.status('s1')  # B's session, still live in Redis, as MongoDB says
    assert held is not None
    assert (held.owner, held.tenure) == ('api-b', restored.session.tenure)
    document = r.document('s1') or {}
    assert (document['state'], document['tenure']) == ('live', restored.session.tenure)


@pytest.mark.parametrize('path', ['activate', 'restore'])
def test_a_close_while_an_activation_or_restore_is_in_flight_is_the_user_s_close(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, path: str
) -> None:
    """A activates s1 (an id whose earlier life expired) or restores it, and is between Redis and MongoDB when
    another replica closes it: the close is of the newest life (MongoDB holds an earlier one), so it lands; A's
    write then finds it closed and is undone. (Fencing ends by life once wrongly refused this close: Fenced, and
    A's write then made s1 live in MongoDB and nowhere in Redis, for good.)"""
    r = make_reaper(make_reaper_settings(idle_ttl_s=600))
    if path == 'restore':
        make_resumable(r)
    else:
        r.lc.activate(r.lc.reserve('api-0'), 's1', ttl_seconds=60)
        r.clock.advance(seconds=61)
        r.sweep(SweepKind.EXPIRED)
        assert (r.document('s1') or {})['state'] == 'expired'
    with paused_before_its_record(r, path) as failures:
        assert r.lc.close('s1')  # the user ends it through another replica
    assert len(failures) == 1  # A is told: its activation or restore did not stand
    print(f'\nreplica A, after the close: {type(failures[0]).__name__}: {failures[0]}')
    status = r.lc.status('s1')  # not in Redis: MongoDB's word
    assert status is not None
    assert status.state is SessionState.CLOSED
    assert r.lc.stats().live == 0
    assert (r.document('s1') or {})['state'] == 'closed'
