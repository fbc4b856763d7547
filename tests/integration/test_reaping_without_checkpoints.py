"""Reaping works with every app: sessions with nothing to lose go without a checkpoint, and a session whose
owner never answers a checkpoint request goes after a grace, as on_missing_checkpoint says."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import pytest

from lifecycle import AsyncLifecycle, Lifecycle, SessionState
from lifecycle.models import Notice, NoticeKind
from lifecycle.ops.cli import explain
from lifecycle.pool.claims import ClaimIndex
from lifecycle.reaper.eviction import Outcome
from lifecycle.reaper.sweeps import SweepKind
from tests.conftest import SettingsFactory
from tests.integration.conftest import ReaperFactory
from tests.integration.reaper import Reaper


@pytest.fixture(params=['mongo', 'memory'])
def store_kind(request: pytest.FixtureRequest) -> str:
    """This suite runs over the MongoDB-wire store and its in-memory twin (see conftest.store_kind)."""
    return str(request.param)


def reaper_with(make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, **overrides: object) -> Reaper:
    return make_reaper(make_reaper_settings(idle_ttl_s=600, checkpoint_grace_s=300, **overrides))


def one_turn(r: Reaper, session_id: str) -> None:
    with r.lc.turn(session_id):
        pass


def test_a_session_that_finished_no_turn_is_evicted_without_a_checkpoint(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = reaper_with(make_reaper_settings, make_reaper)
    r.lc.activate(r.lc.reserve('api-1'), 'fresh')
    r.clock.advance(seconds=600)
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.EVICTED, '')
    document = r.document('fresh')
    assert document is not None
    assert (document['state'], document['turn_seq'], document['checkpoint_waived']) == ('resumable', 0, False)
    restored = r.lc.restore('fresh', 'api-2')
    assert (restored.snapshot, restored.session.turn_seq) == (None, 0)


def test_unsaved_turns_are_evicted_after_the_grace_when_the_owner_never_answers(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = reaper_with(make_reaper_settings, make_reaper)
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=7200)
    lc.checkpoint('s1', {'turns': 0})
    one_turn(r, 's1')
    r.clock.advance(seconds=600)
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.ABORTED, 'not_checkpointed')
    assert [(n.kind.value, n.session_id) for n in lc.notices('api-1')] == [('checkpoint_requested', 's1')]
    r.clock.advance(seconds=299)
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.ABORTED, 'not_checkpointed')
    r.clock.advance(seconds=1)
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.EVICTED, 'checkpoint_waived')
    document = r.document('s1')
    assert document is not None
    assert (document['state'], document['checkpoint_waived'], document['snapshot']) == ('resumable', True, {'turns': 0})
    assert lc.redis.hget(lc.index.keys.counters, 'evicted:idle') == '1'
    assert lc.restore('s1', 'api-1').snapshot == {'turns': 0}  # its last durable checkpoint


def test_a_checkpoint_answers_the_request_and_the_grace_starts_again_at_the_next(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = reaper_with(make_reaper_settings, make_reaper)
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=7200)
    one_turn(r, 's1')
    r.clock.advance(seconds=600)
    r.sweep(SweepKind.IDLE)  # asked
    r.clock.advance(seconds=200)
    lc.checkpoint('s1', {'turns': 1})  # answered
    one_turn(r, 's1')  # and a new unsaved turn
    r.clock.advance(seconds=600)
    r.sweep(SweepKind.IDLE)  # asked again: the grace counts from now
    r.clock.advance(seconds=200)
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.ABORTED, 'not_checkpointed')


def test_a_restored_session_gets_a_fresh_grace_for_its_new_unsaved_turns(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    # Regression: the request of the waived eviction outlived it, so after a restore the next unsaved turn
    # was "asked" long ago and evicted without its owner ever getting the grace.
    r = reaper_with(make_reaper_settings, make_reaper)
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=7200)
    one_turn(r, 's1')
    r.clock.advance(seconds=600)
    r.sweep(SweepKind.IDLE)  # asked
    r.clock.advance(seconds=300)
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.EVICTED, 'checkpoint_waived')
    lc.restore('s1', 'api-2')
    one_turn(r, 's1')
    r.clock.advance(seconds=600)
    r.sweep(SweepKind.IDLE)  # asked anew: the grace counts from now
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.ABORTED, 'not_checkpointed')
    r.clock.advance(seconds=300)
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.EVICTED, 'checkpoint_waived')


def test_turns_after_an_unanswered_request_get_a_request_and_a_grace_of_their_own(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    # Regression: the request's time outlived the turns it was for; a user who came back for longer than the
    # grace and then went idle was evicted at the next sweep (waived), and its owner was never asked again.
    r = reaper_with(make_reaper_settings, make_reaper)
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=7200)
    one_turn(r, 's1')
    r.clock.advance(seconds=600)
    r.sweep(SweepKind.IDLE)  # asked; the owner misses it
    for _ in range(4):  # the user is back for 20 minutes
        r.clock.advance(seconds=300)
        one_turn(r, 's1')
    r.clock.advance(seconds=600)
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.ABORTED, 'not_checkpointed')
    kinds = [n.kind.value for n in lc.notices('api-1')]
    assert kinds == ['checkpoint_requested', 'checkpoint_requested']  # asked again, for the new turns
    r.clock.advance(seconds=300)
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.EVICTED, 'checkpoint_waived')


@pytest.mark.parametrize('policy', ['keep'])
def test_with_keep_a_session_with_unsaved_turns_stays_live_however_long(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, policy: str
) -> None:
    r = reaper_with(make_reaper_settings, make_reaper, on_missing_checkpoint=policy)
    r.lc.activate(r.lc.reserve('api-1'), 's1', ttl_seconds=7200)
    one_turn(r, 's1')
    for _ in range(4):
        r.clock.advance(seconds=600)
        r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.ABORTED, 'not_checkpointed')
    assert r.lc.status('s1').state is SessionState.LIVE  # type: ignore[union-attr]


def test_with_keep_a_lost_replicas_session_with_unsaved_turns_still_goes_after_the_grace(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    """A lost replica answers no checkpoint request: its turns died with it. Kept, its sessions held their slots
    until their hard deadlines (and, after a failover moved every kept session's turn sequence on, all of
    them): with on_missing_checkpoint='keep' too they go after the grace, with their last checkpoint. A
    heartbeating replica's session with unsaved turns stays, as 'keep' says."""
    r = reaper_with(make_reaper_settings, make_reaper, on_missing_checkpoint='keep')
    lc = r.lc
    for owner, session_id in (('api-1', 'dead'), ('api-2', 'alive')):
        lc.heartbeat(owner)
        lc.activate(lc.reserve(owner), session_id, ttl_seconds=7200)
        lc.checkpoint(session_id, {'turns': 0})
        one_turn(r, session_id)
    r.clock.advance(seconds=lc.settings.replica_ttl_s)
    lc.heartbeat('api-2')  # api-1 died
    r.sweep(SweepKind.OWNER_LOST)
    assert [(x.session_id, x.outcome, x.detail) for x in r.results] == [('dead', Outcome.ABORTED, 'not_checkpointed')]
    verdict = explain(lc, lc.status('dead'), r.document('dead') or {})  # type: ignore[arg-type]
    assert 'evicted anyway in 5 min' in ' '.join(verdict.reasons), verdict
    r.clock.advance(seconds=299)
    lc.heartbeat('api-2')
    r.sweep(SweepKind.OWNER_LOST)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.ABORTED, 'not_checkpointed')
    r.clock.advance(seconds=1)
    lc.heartbeat('api-2')
    dry = r.sweep(SweepKind.OWNER_LOST, dry_run=True)  # a dry run says the same
    assert (dry.ordered, dry.refused) == (1, 0)
    r.sweep(SweepKind.OWNER_LOST)
    assert (r.results[-1].session_id, r.results[-1].outcome, r.results[-1].detail) == (
        'dead',
        Outcome.EVICTED,
        'checkpoint_waived',
    )
    document = r.document('dead')
    assert document is not None
    assert (document['state'], document['checkpoint_waived'], document['snapshot']) == ('resumable', True, {'turns': 0})
    for _ in range(2):  # the live replica's session with unsaved turns stays, however long
        r.clock.advance(seconds=600)
        lc.heartbeat('api-2')
        r.sweep(SweepKind.IDLE)
    assert (r.results[-1].session_id, r.results[-1].detail) == ('alive', 'not_checkpointed')
    assert lc.status('alive').state is SessionState.LIVE  # type: ignore[union-attr]


@pytest.mark.parametrize('policy', ['keep', 'evict'])
def test_a_request_made_while_the_replica_lived_does_not_shorten_the_grace_once_it_is_lost(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, policy: str
) -> None:
    """An idle sweep asked api-1 (alive, heartbeating) for a checkpoint of s1 long ago ('keep' kept s1; or s1 was
    touched since, under 'evict'); then api-1 missed its heartbeat for a moment. The owner-lost grace runs from
    the lapse, not from that old request: s1 goes only a grace after it (before: the first owner-lost sweep
    evicted s1 at once with its checkpoint waived, its turn lost, though api-1 came back seconds later; found by
    a review)."""
    r = reaper_with(make_reaper_settings, make_reaper, on_missing_checkpoint=policy)
    lc = r.lc
    lc.heartbeat('api-1')
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=7200)
    lc.checkpoint('s1', {'turns': 0})
    one_turn(r, 's1')
    r.clock.advance(seconds=600)
    lc.heartbeat('api-1')
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.ABORTED, 'not_checkpointed')  # asked at T
    if policy == 'evict':
        lc.touch('s1')  # in use again: not idle, so the idle sweep's grace never ends it
    for _ in range(20):  # 10 minutes, api-1 heartbeating all along
        r.clock.advance(seconds=30)
        lc.heartbeat('api-1')
    r.clock.advance(seconds=lc.settings.replica_ttl_s + 1)  # api-1 misses a heartbeat lease
    r.sweep(SweepKind.OWNER_LOST)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.ABORTED, 'not_checkpointed')
    lc.heartbeat('api-1')  # back: s1 is not lost any more, and stays
    lc.checkpoint('s1', {'turns': 1})
    r.clock.advance(seconds=lc.settings.replica_ttl_s + 1)  # lost again, for good: s1's checkpoint covers it
    r.sweep(SweepKind.OWNER_LOST)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.EVICTED, '')
    assert (r.document('s1') or {})['snapshot'] == {'turns': 1}


def test_a_dry_run_says_a_waived_eviction_would_go_through(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = reaper_with(make_reaper_settings, make_reaper)
    r.lc.activate(r.lc.reserve('api-1'), 's1', ttl_seconds=7200)
    one_turn(r, 's1')
    r.clock.advance(seconds=600)
    assert r.sweep(SweepKind.IDLE, dry_run=True).kept[0][1] == 'not_checkpointed'
    r.sweep(SweepKind.IDLE)
    r.clock.advance(seconds=300)
    assert [o.session_id for o in r.sweep(SweepKind.IDLE, dry_run=True).orders] == ['s1']


def wait_until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.05)


def test_serve_notices_answers_checkpoint_requests_from_the_apps_snapshot(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = reaper_with(make_reaper_settings, make_reaper)
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=7200)
    one_turn(r, 's1')
    seen: list[Notice] = []
    server = lc.serve_notices('api-1', snapshot=lambda sid: ({'agent': sid}, [{'id': 'm1', 'text': 'hi'}]),
                              on_notice=seen.append)  # fmt: skip
    try:
        r.clock.advance(seconds=600)
        r.sweep(SweepKind.IDLE)  # asks; the server answers
        wait_until(lambda: (r.document('s1') or {}).get('checkpoint_seq') == 1)
        r.clock.advance(seconds=1)  # the next sweep: what one keeps, the next one (at a later instant) looks at again
        r.sweep(SweepKind.IDLE)
        assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.EVICTED, '')
        wait_until(lambda: [n.kind.value for n in seen] == ['checkpoint_requested', 'evicted'])
    finally:
        server.stop()
    restored = lc.restore('s1', 'api-1')
    assert (restored.snapshot, restored.messages) == ({'agent': 's1'}, [{'id': 'm1', 'text': 'hi'}])


def test_a_checkpoint_request_answered_after_the_session_was_restored_elsewhere_is_refused(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Replica A is asked for a checkpoint and answers late: meanwhile the session was checkpointed, evicted and
    restored by B. The notice carries the tenure of A's life of the session, so A's answer is refused (Fenced,
    logged) and MongoDB keeps B's snapshot. Before, serve_notices checkpointed unfenced over B's state."""
    r = reaper_with(make_reaper_settings, make_reaper)
    lc = r.lc
    info = lc.activate(lc.reserve('api-a'), 's1', ttl_seconds=7200)
    one_turn(r, 's1')
    r.clock.advance(seconds=600)
    r.sweep(SweepKind.IDLE)  # asks api-a for a checkpoint; A is paused and does not read its inbox yet
    [request] = [n for n in lc.notices('api-a') if n.kind is NoticeKind.CHECKPOINT_REQUESTED]
    assert request.tenure == info.tenure
    lc.checkpoint('s1', {'by': 'A, in time'}, tenure=info.tenure)
    r.clock.advance(seconds=1)
    r.sweep(SweepKind.IDLE)
    assert (r.results[-1].outcome, r.results[-1].detail) == (Outcome.EVICTED, '')
    restored = lc.restore('s1', 'api-b')
    lc.checkpoint('s1', {'by': 'B'}, tenure=restored.session.tenure)
    answered: list[Notice] = []
    with caplog.at_level(logging.INFO, logger='lifecycle.flows'):  # A resumes serving its inbox where it paused
        lc.pool.do(lc.flows.serve('api-a', ['0'], None, lambda sid: {'by': 'A, late'}, answered.append, lc.store))
    assert [n.kind for n in answered] == [NoticeKind.EVICTED]  # the request was refused, so not passed on
    assert 'this copy of it is stale, nothing was checkpointed' in caplog.text
    assert (r.document('s1') or {})['snapshot'] == {'by': 'B'}


def test_the_async_client_serves_notices_with_a_coroutine(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    r = reaper_with(make_reaper_settings, make_reaper)
    r.lc.activate(r.lc.reserve('api-1'), 's1', ttl_seconds=7200)
    one_turn(r, 's1')

    async def snapshot(session_id: str) -> dict[str, str]:
        await asyncio.sleep(0)
        return {'agent': session_id}

    async def scenario() -> None:
        async with AsyncLifecycle(r.lc.settings, clock=r.clock, store=r.store) as alc:
            server = await alc.serve_notices('api-1', snapshot=snapshot)
            try:
                r.clock.advance(seconds=600)
                await asyncio.to_thread(r.sweep, SweepKind.IDLE)
                for _ in range(200):
                    if (r.document('s1') or {}).get('checkpoint_seq') == 1:
                        break
                    await asyncio.sleep(0.05)
            finally:
                await server.stop()

    asyncio.run(scenario())
    assert r.document('s1')['snapshot'] == {'agent': 's1'}  # type: ignore[index]


@pytest.mark.parametrize('client', ['sync', 'async'])
def test_notices_wait_longer_than_the_socket_timeout(make_reaper_settings: SettingsFactory, client: str) -> None:
    """A wait of 7 s once ended after 5 s as BackendUnavailable (redis-py 8's socket timeout)."""
    settings = make_reaper_settings()
    poster = Lifecycle(settings)
    post_later = threading.Timer(6, lambda: poster.pool.run(ClaimIndex(settings, poster.index.keys).notice(
        'api-1', NoticeKind.WARNING, 's1', 'idle', 0)))  # fmt: skip
    post_later.start()
    try:
        if client == 'sync':
            first = next(iter(poster.notices('api-1', block_s=7)))
        else:

            async def wait() -> Notice:
                async with AsyncLifecycle(settings) as alc:
                    return await anext(alc.notices('api-1', block_s=7))

            first = asyncio.run(wait())
    finally:
        post_later.join()
        for key in poster.redis.scan_iter(match=poster.index.keys.prefix + '*'):
            poster.redis.delete(key)
        poster.disconnect()
    assert (first.kind, first.session_id) == (NoticeKind.WARNING, 's1')


@pytest.mark.parametrize('client', ['sync', 'async'])
def test_serve_notices_passes_over_an_entry_it_cannot_read_and_answers_the_rest(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory, client: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: an entry of an unknown kind (a newer version's, a foreign writer's) failed the whole read, so the
    # server re-read it forever, thousands of times a second, and never answered the requests behind it.
    r = reaper_with(make_reaper_settings, make_reaper)
    lc = r.lc
    lc.activate(lc.reserve('api-1'), 's1', ttl_seconds=7200)
    one_turn(r, 's1')
    asked: list[str] = []

    def snapshot(session_id: str) -> dict[str, str]:
        asked.append(session_id)
        return {'agent': session_id}

    def poison_then_ask() -> None:
        lc.redis.xadd(lc.index.keys.inbox('api-1'), {'kind': 'from_a_newer_version', 'session_id': 's1'})
        lc.redis.xadd(lc.index.keys.inbox('api-1'), {'no': 'fields'})
        r.clock.advance(seconds=600)
        r.sweep(SweepKind.IDLE)  # asks for a checkpoint, behind the two entries

    if client == 'sync':
        server = lc.serve_notices('api-1', snapshot=snapshot)
        try:
            poison_then_ask()
            wait_until(lambda: (r.document('s1') or {}).get('checkpoint_seq') == 1)
        finally:
            server.stop()
    else:

        async def scenario() -> None:
            async with AsyncLifecycle(lc.settings, clock=r.clock, store=r.store) as alc:
                server = await alc.serve_notices('api-1', snapshot=snapshot)
                try:
                    await asyncio.to_thread(poison_then_ask)
                    for _ in range(200):
                        if (r.document('s1') or {}).get('checkpoint_seq') == 1:
                            break
                        await asyncio.sleep(0.05)
                finally:
                    await server.stop()

        asyncio.run(scenario())
    assert asked == ['s1']
    assert (r.document('s1') or {}).get('checkpoint_seq') == 1
    passed_over = [rec for rec in caplog.records if 'passed over' in rec.getMessage()]
    assert len(passed_over) == 2  # each logged once: read once, never again


def test_the_async_client_calls_plain_callbacks_on_its_event_loop(
    make_reaper_settings: SettingsFactory, make_reaper: ReaperFactory
) -> None:
    # Regression: plain snapshot and on_notice callbacks were moved to worker threads, where the app's own
    # loop (asyncio.get_running_loop(), its tasks) was out of reach and the callback failed.
    r = reaper_with(make_reaper_settings, make_reaper)
    r.lc.activate(r.lc.reserve('api-1'), 's1', ttl_seconds=7200)
    one_turn(r, 's1')
    seen: list[tuple[str, str]] = []

    def snapshot(session_id: str) -> dict[str, str]:
        asyncio.get_running_loop()  # raises off the loop
        seen.append(('snapshot', threading.current_thread().name))
        return {'agent': session_id}

    def on_notice(notice: Notice) -> None:
        asyncio.get_running_loop()
        seen.append((notice.kind.value, threading.current_thread().name))

    async def scenario() -> None:
        async with AsyncLifecycle(r.lc.settings, clock=r.clock, store=r.store) as alc:
            server = await alc.serve_notices('api-1', snapshot=snapshot, on_notice=on_notice)
            try:
                r.clock.advance(seconds=600)
                await asyncio.to_thread(r.sweep, SweepKind.IDLE)
                for _ in range(200):
                    if len(seen) == 2:
                        break
                    await asyncio.sleep(0.05)
            finally:
                await server.stop()

    asyncio.run(scenario())
    loop_thread = threading.main_thread().name
    assert seen == [('snapshot', loop_thread), ('checkpoint_requested', loop_thread)]
