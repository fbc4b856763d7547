"""The SnapshotStore contract: strict checkpoints and fenced, conditional eviction writes; proven on the
MongoDB-wire server (failures through its fail points) and on the in-memory twin, which must obey the same."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
import pytest

from lifecycle import InvalidArgument, PersistenceError
from lifecycle.errors import ConfigurationError, Fenced
from lifecycle.models import InterruptedTurn, ReapReason, SessionState
from lifecycle.ops import checks
from lifecycle.stores import Mark, MarkOutcome, SessionRecord, SnapshotStore
from lifecycle.stores.documents import interrupted_of
from lifecycle.stores.memory import InMemorySnapshotStore
from lifecycle.stores.mongo import AsyncMongoSnapshotStore, MongoSnapshotStore
from tests.integration.reaper import fail

Admin = pymongo.MongoClient[dict[str, Any]]


class Awaited:
    """The async store behind the sync protocol: each call runs to completion on one event loop of its own."""

    def __init__(self, store: AsyncMongoSnapshotStore) -> None:
        self.store = store
        self.loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)
        assert inspect.iscoroutinefunction(method), name  # natively async: no thread behind it
        return lambda *args: self.loop.run_until_complete(method(*args))

    def close(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()


@pytest.fixture(params=['mongo', 'mongo-async', 'memory'])
def store(request: pytest.FixtureRequest) -> Iterator[SnapshotStore]:
    store: Any
    if request.param == 'memory':
        store = InMemorySnapshotStore()
    else:
        url, database = request.getfixturevalue('mongo_server_url'), request.getfixturevalue('mongo_database')
        if request.param == 'mongo-async':
            store = Awaited(AsyncMongoSnapshotStore(url, database, timeout_ms=2_000))
        else:
            store = MongoSnapshotStore(url, database, timeout_ms=2_000)
    store.ensure_indexes()
    yield store
    store.close()


MONGO_ONLY = pytest.mark.parametrize('store', ['mongo', 'mongo-async'], indirect=True)  # MongoDB's fail points


def record(session_id: str = 's1', turn_seq: int = 2) -> SessionRecord:
    now = datetime.now(UTC)
    return SessionRecord(session_id, 'api-1', 'acme', None, now, now, now + timedelta(minutes=15), turn_seq)


def mark_one(
    store: SnapshotStore, rec: SessionRecord, token: int, reason: ReapReason, require_checkpoint: bool
) -> MarkOutcome:
    [outcome] = store.mark_resumable([Mark(rec, token, reason, needs_checkpoint=require_checkpoint)])
    return outcome


def test_checkpoint_writes_messages_in_order_then_the_document(store: SnapshotStore) -> None:
    store.checkpoint('s1', {'agent': 'state-1'}, [{'id': 'm1', 'text': 'hi'}, {'id': 'm2', 'text': 'yo'}], 1, 1)
    store.checkpoint('s1', {'agent': 'state-2'}, [{'id': 'm2', 'text': 'yo!'}, {'id': 'm3', 'text': 'ok'}], 2, 2)
    assert [m['text'] for m in store.messages('s1')] == ['hi', 'yo!', 'ok']
    document = store.load('s1')
    assert document is not None
    assert (document['snapshot'], document['checkpoint_seq'], document['state']) == ({'agent': 'state-2'}, 2, 'live')


@MONGO_ONLY
def test_checkpoint_is_strict(store: SnapshotStore, mongo_admin: Admin) -> None:
    with pytest.raises(InvalidArgument, match='needs an "id"'):
        store.checkpoint('s1', {}, [{'text': 'no id'}], 1, 1)
    fail(mongo_admin, 'update', errorCode=8)
    with pytest.raises(PersistenceError, match="checkpoint of session 's1'"):
        store.checkpoint('s1', {'v': 1}, [{'id': 'm1'}], 1, 1)
    fail(mongo_admin, 'update', writeConcernError={'code': 64, 'errmsg': 'waiting for replication timed out'})
    with pytest.raises(PersistenceError, match='replication'):
        store.checkpoint('s1', {'v': 1}, None, 1, 1)


def test_mark_resumable_needs_a_covering_checkpoint(store: SnapshotStore) -> None:
    assert mark_one(store, record(turn_seq=2), 10, ReapReason.IDLE, True) is MarkOutcome.NOT_CHECKPOINTED
    store.checkpoint('s1', {'v': 1}, None, 1, 1)
    assert mark_one(store, record(turn_seq=2), 11, ReapReason.IDLE, True) is MarkOutcome.NOT_CHECKPOINTED
    store.checkpoint('s1', {'v': 2}, None, 2, 2)
    assert mark_one(store, record(turn_seq=2), 12, ReapReason.IDLE, True) is MarkOutcome.DONE
    document = store.load('s1')
    assert document is not None
    assert (document['state'], document['fence'], document['reason']) == ('resumable', 12, 'idle')


def test_mark_resumable_without_required_checkpoint_creates_the_document(store: SnapshotStore) -> None:
    assert mark_one(store, record('fresh'), 5, ReapReason.OWNER_LOST, False) is MarkOutcome.DONE
    document = store.load('fresh')
    assert document is not None
    assert (document['state'], document['fence'], document['owner']) == ('resumable', 5, 'api-1')


def test_writes_of_an_older_token_are_fenced_off(store: SnapshotStore) -> None:
    assert mark_one(store, record(), 20, ReapReason.IDLE, False) is MarkOutcome.DONE
    assert mark_one(store, record(), 19, ReapReason.IDLE, False) is MarkOutcome.FENCED
    before = store.raise_fence('s1', 30)
    assert before is not None
    assert before['fence'] == 20
    assert mark_one(store, record(), 25, ReapReason.IDLE, False) is MarkOutcome.FENCED
    assert store.restore('s1', 29, 'api-2') is None
    restored = store.restore('s1', 31, 'api-2')
    assert restored is not None
    assert (restored['state'], restored['fence']) == ('resumable', 30)  # as it was
    document = store.load('s1')
    assert document is not None
    assert (document['state'], document['fence'], document['owner']) == ('live', 31, 'api-2')


def test_a_turn_cut_off_is_kept_with_the_eviction_until_the_next_record_write(store: SnapshotStore) -> None:
    cut = InterruptedTurn(3, 1_700_000_000_000, 'api-1')
    assert (
        mark_one(store, replace(record(), interrupted_turn=cut), 20, ReapReason.OWNER_LOST, False) is MarkOutcome.DONE
    )
    assert interrupted_of(store.load('s1') or {}) == cut
    restored = store.restore('s1', 21, 'api-2')
    assert restored is not None
    assert interrupted_of(restored) == cut
    assert interrupted_of(store.load('s1') or {}) == cut  # until the next record write replaces it
    store.end(replace(record(), interrupted_turn=InterruptedTurn(4, 0, 'api-2')), SessionState.EXPIRED, 22, 1000)
    assert interrupted_of(store.load('s1') or {}) == InterruptedTurn(4, 0, 'api-2')


def test_ended_sessions_are_never_marked_resumable(store: SnapshotStore) -> None:
    store.end(record(), SessionState.EXPIRED, 40, 1_000)
    assert mark_one(store, record(), 41, ReapReason.IDLE, False) is MarkOutcome.ENDED
    store.revert([Mark(record(), 41, ReapReason.IDLE)])
    assert store.load('s1')['state'] == 'expired'  # type: ignore[index]


@pytest.mark.parametrize(
    'failure',
    [
        {'errorCode': 8},
        {'writeConcernError': {'code': 64, 'errmsg': 'waiting for replication timed out'}},
        {'closeConnection': True},
        {'blockConnection': True, 'blockTimeMS': 4_000},
    ],
    ids=['error', 'write-concern', 'closed-connection', 'timeout'],
)
@MONGO_ONLY
def test_every_failure_of_the_eviction_write_raises(
    store: SnapshotStore, mongo_admin: Admin, failure: dict[str, Any]
) -> None:
    store.checkpoint('s1', {'v': 1}, None, 2, 2)
    fail(mongo_admin, 'update', **failure)
    with pytest.raises(PersistenceError, match="eviction write of session 's1'"):
        mark_one(store, record(turn_seq=2), 50, ReapReason.IDLE, True)


def test_a_fenced_off_eviction_write_changes_nothing_when_it_lands_late(store: SnapshotStore) -> None:
    """Issue 18, hole 2: `fence_off` after a failed eviction write puts back what the batch's own marks wrote, creates
    the missing document live, leaves others' writes alone, and a late copy of the same write then changes nothing."""
    store.checkpoint('landed', {'v': 1}, None, 2, 2)
    store.checkpoint('others', {'v': 1}, None, 2, 2)
    assert mark_one(store, record('others'), 30, ReapReason.IDLE, True) is MarkOutcome.DONE
    store.end(record('closed'), SessionState.CLOSED, 31, 1_000)
    names = ['landed', 'missing', 'others', 'closed']
    marks = [Mark(record(name), 40 + i, ReapReason.IDLE, needs_checkpoint=name != 'missing')
             for i, name in enumerate(names)]  # fmt: skip
    assert mark_one(store, record('landed'), 40, ReapReason.IDLE, True) is MarkOutcome.DONE  # it landed in time
    store.fence_off(marks, 50)
    states = {name: (store.load(name) or {}).get('state') for name in names}
    assert states == {'landed': 'live', 'missing': 'live', 'others': 'resumable', 'closed': 'closed'}
    assert all((store.load(name) or {})['fence'] == 50 for name in names)

    late = store.mark_resumable(marks)  # the same write, landing now
    assert late == [MarkOutcome.FENCED, MarkOutcome.FENCED, MarkOutcome.FENCED, MarkOutcome.ENDED]
    assert {name: (store.load(name) or {}).get('state') for name in names} == states
    store.fence_off(marks[:1], 45)  # a fence is never lowered
    assert (store.load('landed') or {})['fence'] == 50


def test_a_stale_fence_off_never_moves_a_newer_evictions_fence(store: SnapshotStore) -> None:
    """`fence_off` raises only the fences its own marks' late writes could still pass: a paused worker's, drawn after
    a newer eviction's token, leaves that eviction's fence alone (its recovery judges the session by it)."""
    store.checkpoint('s', {'v': 1}, None, 2, 2)
    stale = Mark(record('s'), 40, ReapReason.IDLE, True)
    assert mark_one(store, record('s'), 50, ReapReason.IDLE, True) is MarkOutcome.DONE  # a newer eviction landed
    store.fence_off([stale], 60)  # the paused worker's fence, drawn after it
    document = store.load('s') or {}
    assert (document['state'], document['fence']) == ('resumable', 50)


def test_one_batch_gives_each_mark_its_own_outcome(store: SnapshotStore) -> None:
    store.checkpoint('saved', {'v': 1}, None, 2, 2)
    store.checkpoint('stale', {'v': 1}, None, 1, 1)
    store.checkpoint('fenced', {'v': 1}, None, 2, 2)
    assert mark_one(store, record('fenced'), 70, ReapReason.IDLE, True) is MarkOutcome.DONE
    store.end(record('ended'), SessionState.CLOSED, 5, 1_000)
    before = {name: store.load(name) for name in ('stale', 'fenced')}
    names = ['saved', 'stale', 'never', 'fenced', 'ended']
    outcomes = store.mark_resumable([Mark(record(name), 60 + i, ReapReason.LRU) for i, name in enumerate(names)])
    assert dict(zip(names, outcomes, strict=True)) == {
        'saved': MarkOutcome.DONE,
        'stale': MarkOutcome.NOT_CHECKPOINTED,
        'never': MarkOutcome.NOT_CHECKPOINTED,
        'fenced': MarkOutcome.FENCED,
        'ended': MarkOutcome.ENDED,
    }
    documents = {name: store.load(name) for name in names}
    assert documents['saved'] is not None
    assert (documents['saved']['state'], documents['saved']['fence'], documents['saved']['reason']) == (
        'resumable',
        60,
        'lru',
    )
    assert not [field for field in documents['saved'] if field.startswith('_lifecycle')]  # scratch fields gone
    assert {name: documents[name] for name in before} == before  # a mark that did not land changed nothing
    assert documents['stale']['state'] == 'live'  # type: ignore[index]
    assert documents['never'] is None
    assert documents['fenced']['fence'] == 70  # type: ignore[index]
    assert documents['ended']['state'] == 'closed'  # type: ignore[index]


def test_a_batch_without_required_checkpoints_upserts_and_still_refuses_newer_fences(store: SnapshotStore) -> None:
    assert mark_one(store, record('newer'), 90, ReapReason.IDLE, False) is MarkOutcome.DONE
    store.end(record('ended'), SessionState.EXPIRED, 5, 1_000)
    names = ['fresh', 'newer', 'ended']
    outcomes = store.mark_resumable([Mark(record(name), 80, ReapReason.OWNER_LOST, False) for name in names])
    assert outcomes == [MarkOutcome.DONE, MarkOutcome.FENCED, MarkOutcome.ENDED]
    assert store.load('fresh')['fence'] == 80  # type: ignore[index]


@MONGO_ONLY
def test_a_failed_batch_raises_naming_its_size(store: SnapshotStore, mongo_admin: Admin) -> None:
    for name in ('a', 'b'):
        store.checkpoint(name, {'v': 1}, None, 2, 2)
    fail(mongo_admin, 'update', writeConcernError={'code': 64, 'errmsg': 'waiting for replication timed out'})
    with pytest.raises(PersistenceError, match=r"eviction write of 2 sessions \('a', \.\.\.\) failed.*replication"):
        store.mark_resumable([Mark(record(name), 9, ReapReason.IDLE) for name in ('a', 'b')])


def test_a_checkpoint_mongodb_could_not_store_is_refused_before_anything_is_written(
    store: SnapshotStore,
) -> None:
    store.checkpoint('s1', {'v': 1}, [{'id': 'm1', 'text': 'kept'}], 1, 1)
    refused: list[tuple[Any, Any, str]] = [
        ({'blob': 'x' * (17 * 1024 * 1024)}, [{'id': 'm2'}], 'snapshot .* bytes of BSON'),
        ({'tags': {'a', 'b'}}, [{'id': 'm2'}], 'snapshot .* cannot be stored in MongoDB: .*set'),
        ({1: 'int key'}, None, 'snapshot .* string keys'),
        (['not', 'a', 'mapping'], None, 'must be a mapping'),
        ({'v': 2}, [{'id': 'm2'}, {'id': 'm3', 'tags': {1}}], "message 'm3' .* cannot be stored"),
        ({'v': 2}, [{'id': 'm2', 'blob': 'x' * (17 * 1024 * 1024)}], "message 'm2' .* bytes of BSON"),
        ({'v': 2}, [{'id': 'm2'}, {'id': 'm2'}], 'appears twice'),
        ({'v': 2}, [{'id': None}], 'needs an "id"'),
        ({'v': 2}, 'not a list', 'must be a list'),
    ]
    for snapshot, messages, why in refused:
        with pytest.raises(InvalidArgument, match=why):
            store.checkpoint('s1', snapshot, messages, 2, 2)
    # Nothing of any refused checkpoint was written: not a message, not the snapshot.
    assert store.messages('s1') == [{'id': 'm1', 'text': 'kept'}]
    document = store.load('s1')
    assert document is not None
    assert (document['snapshot'], document['checkpoint_seq']) == ({'v': 1}, 1)


def test_heartbeating_owners_are_recorded_once_per_pool(store: SnapshotStore) -> None:
    assert store.heartbeating_owners('{a}') == []
    for pool, owner in (('{a}', 'api-2'), ('{a}', 'api-1'), ('{a}', 'api-1'), ('{b}', 'api-9')):
        store.announce_owner(pool, owner)
    assert store.heartbeating_owners('{a}') == ['api-1', 'api-2']
    assert store.heartbeating_owners('{b}') == ['api-9']


@pytest.mark.parametrize('raise_it', ['raise_fence', 'raise_fences', 'fence_off'])
def test_a_resent_activation_is_recorded_after_a_fence_was_raised_over_it(store: SnapshotStore, raise_it: str) -> None:
    """activate() resent (the same reservation: Redis hands back the same tenure) after a failed eviction or a
    rebuild raised the session's fence: MongoDB takes it as the same life, left as it is (its fence where it was
    raised, the checkpoint taken since) (it refused the resend, and the undo closed the replica's own session)."""
    store.activated(record(), 20, 'pool')
    store.checkpoint('s1', {'agent': 'state'}, [{'id': 'm1'}], 2, 21, 20)
    if raise_it == 'raise_fence':
        store.raise_fence('s1', 30)
    elif raise_it == 'raise_fences':
        store.raise_fences(['s1'], 30)
    else:
        store.fence_off([Mark(record(), 20, ReapReason.IDLE, needs_checkpoint=False)], 30)
    store.activated(record(turn_seq=0), 20, 'pool')
    document = store.load('s1')
    assert document is not None
    assert (document['state'], document['tenure'], document['fence']) == ('live', 20, 30)
    # It leaves its life as it is: the checkpoint taken since stays (a resend once wiped it).
    assert (document['snapshot'], document['checkpoint_seq'], document['turn_seq']) == ({'agent': 'state'}, 2, 2)
    with pytest.raises(Fenced):  # a different life's token below the fence is still refused
        store.activated(record(), 21, 'pool')


def test_an_end_of_an_earlier_life_never_lands_on_a_later_one(store: SnapshotStore) -> None:
    """A close from a stale copy of the session (its tenure 20) after MongoDB recorded a later life (tenure 30):
    nothing written, and the store says so; the end of the life it holds, or of a record without a tenure, lands."""
    store.activated(record(), 30, 'pool')
    assert store.end(replace(record(), tenure=20), SessionState.CLOSED, 40, 5000) is False
    document = store.load('s1')
    assert document is not None
    assert (document['state'], document['tenure'], document['fence']) == ('live', 30, 30)
    assert store.end(replace(record(), tenure=30), SessionState.CLOSED, 41, 5000) is True
    assert store.end(replace(record(), tenure=20), SessionState.CLOSED, 42, 5000) is True  # already ended: said
    document = store.load('s1')
    assert document is not None
    assert (document['state'], document['fence']) == ('closed', 41)


def test_an_end_of_a_life_whose_record_is_still_in_flight_lands(store: SnapshotStore) -> None:
    """Closed while its restore (or activation) is between Redis and MongoDB: the document holds the earlier
    life (tenure 20), the close is of the newer one (30), and it is the user's: it lands."""
    store.activated(record(), 20, 'pool')
    assert store.end(replace(record(), tenure=30), SessionState.CLOSED, 31, 5000) is True
    document = store.load('s1')
    assert document is not None
    assert (document['state'], document['fence']) == ('closed', 31)


def test_an_eviction_of_an_earlier_life_never_lands_on_a_later_one(store: SnapshotStore) -> None:
    """A stale copy of the session (tenure 20) evicted with a fresh token (50) after MongoDB recorded a later life
    (30): refused as fenced, the later life as it was; a record without a tenure (of any life) still lands."""
    store.activated(record(), 30, 'pool')
    [outcome] = store.mark_resumable([Mark(replace(record(), tenure=20), 50, ReapReason.IDLE, needs_checkpoint=False)])
    assert outcome is MarkOutcome.FENCED
    document = store.load('s1')
    assert document is not None
    assert (document['state'], document['tenure'], document['fence']) == ('live', 30, 30)
    assert mark_one(store, record(), 51, ReapReason.IDLE, False) is MarkOutcome.DONE


class Commands(pymongo.monitoring.CommandListener):
    """The names of the commands a client sent."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: pymongo.monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: pymongo.monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: pymongo.monitoring.CommandFailedEvent) -> None:
        pass


def test_a_batch_whose_marks_all_land_is_one_update_and_nothing_read_back(
    mongo_server_url: str, mongo_database: str
) -> None:
    listener = Commands()
    store = MongoSnapshotStore(mongo_server_url, mongo_database, timeout_ms=2_000,
                               client=pymongo.MongoClient(mongo_server_url, event_listeners=[listener]))  # fmt: skip
    try:
        names = [f'all-{i}' for i in range(5)]
        for name in names:
            store.checkpoint(name, {'v': 1}, None, 2, 2)
        listener.names.clear()
        outcomes = store.mark_resumable([Mark(record(name), 40 + i, ReapReason.IDLE) for i, name in enumerate(names)])
        assert outcomes == [MarkOutcome.DONE] * len(names)
        assert listener.names == ['update']
        assert {store.load(name)['fence'] for name in names} == {40, 41, 42, 43, 44}  # type: ignore[index]
        # One that does not land: the outcomes are read back.
        listener.names.clear()
        outcomes = store.mark_resumable([Mark(record(name), 50 if name != 'all-0' else 30, ReapReason.IDLE)
                                         for name in names])  # fmt: skip
        assert outcomes == [MarkOutcome.FENCED] + [MarkOutcome.DONE] * (len(names) - 1)
        assert listener.names == ['update', 'find']
    finally:
        store.close()


@pytest.mark.parametrize('flavour', ['sync', 'async'])
@pytest.mark.parametrize('collection', ['sessions', 'messages', 'pools', 'owners'])
def test_a_collection_that_compares_ids_by_a_collation_is_refused_naming_it(
    mongo_server_url: str, mongo_database: str, collection: str, flavour: str
) -> None:
    """Ids 'A' and 'a' are two sessions. A collection created with a case-insensitive default collation would
    make them one document on mongod (its `_id` index compares by the collation): refused before any write, as
    `lifecycle check` reports it; an explicit simple collation is what lifecycle needs, and is accepted."""
    admin: Admin = pymongo.MongoClient(mongo_server_url)
    store: Any = (MongoSnapshotStore(mongo_server_url, mongo_database, timeout_ms=2_000) if flavour == 'sync' else
                  Awaited(AsyncMongoSnapshotStore(mongo_server_url, mongo_database, timeout_ms=2_000)))  # fmt: skip
    try:
        admin[mongo_database].create_collection(collection, collation={'locale': 'en', 'strength': 2})
        with pytest.raises(ConfigurationError, match=rf"'{collection}'.*'locale': 'en'"):
            store.ensure_indexes()
        checker = MongoSnapshotStore(mongo_server_url, mongo_database, client=admin)
        assert f"mongo: collection {collection!r} compares ids by collation {{'locale': 'en'," in (
            ' '.join(checks.mongo_problems(checker))
        )
        admin[mongo_database].drop_collection(collection)
        admin[mongo_database].create_collection(collection, collation={'locale': 'simple'})
        store.ensure_indexes()
        assert checks.mongo_problems(checker) == []
    finally:
        store.close()
        admin.close()


def test_a_view_in_place_of_a_collection_is_refused_naming_it(mongo_server_url: str, mongo_database: str) -> None:
    """A view takes no writes: a worker would start, then fail every write (its index creation only logged)."""
    admin: Admin = pymongo.MongoClient(mongo_server_url)
    store = MongoSnapshotStore(mongo_server_url, mongo_database, timeout_ms=2_000)
    try:
        admin[mongo_database].create_collection('sessions', viewOn='elsewhere', pipeline=[])
        with pytest.raises(ConfigurationError, match="'sessions' is a view \\(of 'elsewhere'\\)"):
            store.ensure_indexes()
        assert any("'sessions' is a view" in problem for problem in checks.mongo_problems(store))
    finally:
        store.close()
        admin.close()
