"""MongoDB stores: session documents and messages, every write `w: majority, j: true`.

Each operation is written once, as a plan (a generator of MongoDB operations, see `lifecycle.steps`), and
run by `MongoSnapshotStore` on pymongo's `MongoClient` or by `AsyncMongoSnapshotStore` on its
`AsyncMongoClient`: the same filters, fences and refusals, natively sync or async.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Generator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import pymongo
from pymongo import AsyncMongoClient, MongoClient, ReturnDocument, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)
from pymongo.write_concern import WriteConcern

from lifecycle.errors import (
    ConfigurationError,
    Fenced,
    InvalidArgument,
    PersistenceError,
    SessionExists,
    SessionNotLive,
    SessionReaping,
)
from lifecycle.models import SessionState
from lifecycle.steps import Done, advance
from lifecycle.stores.base import Mark, MarkOutcome, SessionRecord
from lifecycle.stores.documents import checked_messages, checked_snapshot, interrupted_fields
from lifecycle.validate import LIFT_LIMIT, TOKEN_LIMIT

log = logging.getLogger(__name__)
Document = dict[str, Any]
T = TypeVar('T')
DUPLICATE_KEY = 11000
# A session's messages in conversation order: by the order the pool handed their checkpoint (one counter, never a
# writer's clock), then their place in it; `batch_ns`, a writer's clock, orders only those written before (no order).
MESSAGE_ORDER = [('order', 1), ('batch_ns', 1), ('index', 1)]


def _below(token: int) -> dict[str, Any]:
    """Filter: the session's fence is older than `token` (or it has none yet)."""
    return {'$or': [{'fence': {'$lt': token}}, {'fence': {'$exists': False}}]}


COLLECTIONS = ('sessions', 'messages', 'pools', 'owners')  # every one lifecycle writes
LOAD_MANY_FIELDS = ('_id', 'state', 'checkpoint_seq', 'pool', 'created_at', 'tenure')  # what load_many reads
ANY_LIFE = 10 * TOKEN_LIMIT  # above every tenure (tokens stay below TOKEN_LIMIT): a record without one is of any life


def later_life(document: Mapping[str, Any], tenure: int | None) -> bool:
    """Whether `document` records a later life of its session than that of `tenure` (None: any)."""
    return tenure is not None and (document.get('tenure') or 0) > tenure


def _no_later_life(tenure: int) -> dict[str, Any]:
    """Filter: the document records no life later than that of `tenure` (this one, an earlier one whose restore or
    activation is in flight, or one from before lives recorded theirs)."""
    return {'$or': [{'tenure': {'$lte': tenure}}, {'tenure': {'$exists': False}}]}


def _subject(session_ids: str | Sequence[str]) -> str:
    """'session 's1'', or '40 sessions ('s1', ...)' for a batch."""
    if isinstance(session_ids, str) or len(session_ids) == 1:
        return f'session {session_ids if isinstance(session_ids, str) else session_ids[0]!r}'
    return f'{len(session_ids)} sessions ({session_ids[0]!r}, ...)'


def collation_problem(collection: str, options: Mapping[str, Any]) -> str | None:
    """Why `collection` (its options, as listCollections gives them) cannot hold lifecycle's documents, or None. A
    default collation other than simple compares ids by it (its `_id` index too, on mongod): 'A' and 'a', two
    sessions, would be one document."""
    if 'viewOn' in options:
        return f'{collection!r} is a view (of {options["viewOn"]!r}): lifecycle writes its documents; drop the view'
    collation = options.get('collation')
    if not collation or collation.get('locale') == 'simple':
        return None
    return (f"collection {collection!r} compares ids by collation {collation!r}: session ids 'A' and 'a' would be "
            "one document; create it without a default collation (or with {'locale': 'simple'})")  # fmt: skip


def _marks_filter(marks: Sequence[Mark]) -> dict[str, Any]:
    """The documents an eviction write may change: the batch's, still live (or resumable). Only conditions any
    MongoDB-wire server serves from the `_id` index: the per-session ones are in the update (`_marks_update`),
    so the write costs the batch, not the collection."""
    return {
        '_id': {'$in': [mark.record.session_id for mark in marks]},
        'state': {'$in': [SessionState.LIVE.value, SessionState.RESUMABLE.value]},
    }


def _marks_update(marks: Sequence[Mark], now: datetime) -> list[dict[str, Any]]:
    """An update pipeline of one stage giving each matched document its own mark's values, looked up by `_id`, where
    its own condition holds: a fence older than its token (or none yet), no later life than the one Redis held,
    and, if it needs one, a checkpoint covering its last finished turn. A document whose condition fails is left
    exactly as it was (so it is not counted as modified)."""
    ids = [mark.record.session_id for mark in marks]
    own = [{'token': m.token, 'tenure': m.record.tenure or ANY_LIFE, 'needs': m.needs_checkpoint,
            'seq': m.record.turn_seq,
            'set': {**record_fields(m.record), 'fence': m.token, 'reason': m.reason.value,
                    'checkpoint_waived': m.waived, 'state': SessionState.RESUMABLE.value, 'evicted_at': now,
                    'updated_at': now}}
           for m in marks]  # fmt: skip
    eligible = {'$and': [
        {'$lt': [{'$ifNull': ['$fence', -1]}, '$$mark.token']},
        # Not over a later life than the one Redis held (a stale copy a lossy failover brought back).
        {'$lte': [{'$ifNull': ['$tenure', 0]}, '$$mark.tenure']},
        {'$or': [{'$not': ['$$mark.needs']}, {'$gte': [{'$ifNull': ['$checkpoint_seq', -1]}, '$$mark.seq']}]},
    ]}  # fmt: skip
    mark = {'$arrayElemAt': [{'$literal': own}, {'$indexOfArray': [{'$literal': ids}, '$_id']}]}
    return [{'$replaceWith': {'$let': {'vars': {'mark': mark}, 'in': {
        '$cond': [eligible, {'$mergeObjects': ['$$ROOT', '$$mark.set']}, '$$ROOT']}}}}]  # fmt: skip


def _marked_document(mark: Mark, now: datetime) -> Document:
    """A session document created by its eviction (no checkpoint was required and none was written)."""
    return {
        '_id': mark.record.session_id,
        **record_fields(mark.record),
        'state': SessionState.RESUMABLE.value,
        'fence': mark.token,
        'reason': mark.reason.value,
        'checkpoint_waived': mark.waived,
        'evicted_at': now,
        'updated_at': now,
    }


def message_write(session_id: str, message: Mapping[str, Any], order: int, index: int, tenure: int | None
                  ) -> UpdateOne:  # fmt: skip
    """One message's idempotent upsert, placed by `order` and `index` when first written. With a tenure, never over
    a message a newer tenure wrote (that upsert collides on the unique index instead), and tagged with it."""
    found: dict[str, Any] = {'session_id': session_id, 'message_id': message['id']}
    placed: dict[str, Any] = {'order': order, 'index': index}
    written: dict[str, Any] = {'body': dict(message)}
    if tenure is not None:
        found['$or'] = [{'written_by': {'$lte': tenure}}, {'written_by': {'$exists': False}}]
        placed['tenure'] = tenure
        written['written_by'] = tenure
    return UpdateOne(found, {'$set': written, '$setOnInsert': placed}, upsert=True)


def visible(document: Mapping[str, Any] | None, message: Mapping[str, Any]) -> bool:
    """Whether a stored message counts: one its tenure's checkpoint committed (its order at most the highest that
    tenure committed), or one written before messages had tenures. A stale replica's late messages never count."""
    tenure = message.get('tenure')
    if tenure is None:
        return True
    committed = ((document or {}).get('committed') or {}).get(str(tenure))
    return isinstance(committed, int) and int(message.get('order', 0)) <= committed


def refuse_checkpoint(session_id: str, document: Mapping[str, Any], turn_seq: int, tenure: int | None = None) -> None:
    """Raise if a checkpoint at `turn_seq` (of `tenure`, if given) must not be written over `document`."""
    state = document.get('state')
    if state != SessionState.LIVE.value:
        raise SessionNotLive(f'session {session_id!r} is {state} in MongoDB (evicted or ended meanwhile); '
                             'the checkpoint was not written')  # fmt: skip
    held_tenure = document.get('tenure')
    if tenure is not None and held_tenure is not None and held_tenure != tenure:
        raise Fenced(f'session {session_id!r} was activated or restored again (tenure {held_tenure}) since this '
                     f'checkpoint\'s tenure {tenure}: a stale replica\'s checkpoint, not written')  # fmt: skip
    held = document.get('checkpoint_seq')
    if isinstance(held, int) and held > turn_seq:
        raise Fenced(f'session {session_id!r} already holds a checkpoint of turn {held}; this one (turn '
                     f'{turn_seq}) is older and was not written')  # fmt: skip


def record_fields(record: SessionRecord) -> dict[str, Any]:
    """What a session document keeps of its record."""
    return {
        'owner': record.owner,
        'tenant': record.tenant,
        'profile': record.profile,
        'created_at': record.created_at,
        'last_active_at': record.last_active_at,
        'expires_at': record.expires_at,
        'turn_seq': record.turn_seq,
        'interrupted_turn': interrupted_fields(record.interrupted_turn),
        'trail': record.trail.as_document() if record.trail is not None else None,
    }


def fence_of(document: Mapping[str, Any]) -> float:
    """The document's fence as a number: 0 without one; infinite where outside damage left one no token can be
    (text, an array, a Decimal128, NaN or an infinity), which every fenced write is then kept off."""
    fence = document.get('fence', 0)
    number = isinstance(fence, int | float) and not isinstance(fence, bool)  # bson's Int64 is an int
    return fence if number and math.isfinite(fence) else math.inf


def mark_outcome(document: Mapping[str, Any] | None, mark: Mark) -> MarkOutcome:
    """How one mark of a batch ended, from the document as it is now (`fence` is unique to each claim)."""
    token = mark.token
    if document is None:
        return MarkOutcome.NOT_CHECKPOINTED
    if document.get('state') == SessionState.RESUMABLE and document.get('fence') == token:
        return MarkOutcome.DONE
    if document.get('state') in (SessionState.EXPIRED.value, SessionState.CLOSED.value):
        return MarkOutcome.ENDED
    if fence_of(document) >= token or later_life(document, mark.record.tenure):
        return MarkOutcome.FENCED
    return MarkOutcome.NOT_CHECKPOINTED


@dataclass(frozen=True)
class Op:
    """One MongoDB operation of a plan: `collection.method(*args, **kwargs)`; with `listed`, the cursor it
    returns read to a list (sorted by `sort`)."""

    collection: str  # 'sessions' or 'messages'
    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    listed: bool = False
    sort: list[tuple[str, int]] | None = None


Plan = Generator[Op, Any, T]


def _find(collection: str, *args: Any, sort: list[tuple[str, int]] | None = None, limit: int = 0) -> Op:
    return Op(collection, 'find', args, {'limit': limit} if limit else {}, listed=True, sort=sort)


# What a session document carries from an earlier life of the same id (closed or expired, then activated anew);
# not interrupted_turn: every record write sets it.
PREVIOUS_LIFE = ('snapshot', 'checkpoint_seq', 'checkpointed_at', 'evicted_at', 'ended_at', 'reason',
                 'checkpoint_waived', 'restored_at', 'deleted_at')  # fmt: skip


def _of_pool(pool: str) -> dict[str, Any]:
    """Documents of pool `pool`, and those written before activations named their pool (an upgraded pool's)."""
    return {'$or': [{'pool': pool}, {'pool': {'$exists': False}}]}


def _retired(pool: str, before: datetime) -> dict[str, Any]:
    """Resumable sessions of pool `pool` evicted before `before`: past their retention."""
    return {'state': SessionState.RESUMABLE.value, 'evicted_at': {'$lt': before}, **_of_pool(pool)}


def _not_resumable() -> dict[str, Any]:
    return {'state': {'$ne': SessionState.RESUMABLE.value}}


def refuse_activation(session_id: str, document: Mapping[str, Any] | None) -> None:
    """Raise why an activation record could not be written over `document`."""
    if document is not None and document.get('state') == SessionState.RESUMABLE:
        raise SessionExists(f'session {session_id!r} is resumable in MongoDB: restore it, or use another id')
    if document is not None and document.get('purge_pending'):
        raise SessionReaping(f'session {session_id!r} is being deleted (its retention passed): its messages are '
                             'going; retry shortly')  # fmt: skip
    raise Fenced(f'session {session_id!r} was written under a newer token; its activation was not recorded')


def may_land(exc: PyMongoError) -> bool:
    """Whether a failed write may have applied or may still apply. Only the server's own refusal says it did
    not: not a timeout or a lost connection (it may be running yet), not a write-concern error (it applied), not
    one the driver retried (the first try may be running yet)."""
    if not isinstance(exc, OperationFailure) or isinstance(exc, WriteConcernError | ExecutionTimeout):
        return True  # (a multi-document write stopped at its deadline may have applied in part)
    details = exc.details or {}
    return bool(details.get('writeConcernError') or details.get('writeConcernErrors')
                or exc.has_error_label('RetryableWriteError'))  # fmt: skip


def _insert_failed(exc: BulkWriteError) -> bool:
    """Whether an unordered insert failed for a reason other than documents that exist already."""
    details = exc.details
    return bool(details.get('writeConcernErrors')) or any(e.get('code') != DUPLICATE_KEY
                                                          for e in details.get('writeErrors', ()))  # fmt: skip


class Plans:
    """Every store operation as a plan; the two stores below run them."""

    @staticmethod
    def ensure_indexes_plan() -> Plan[None]:
        """The indexes lifecycle's queries rely on, once the collections are found to compare ids as lifecycle does
        (ConfigurationError, nothing created, when one does not)."""
        for collection in COLLECTIONS:
            unfit = collation_problem(collection, (yield Op(collection, 'options')))
            if unfit:
                raise ConfigurationError(unfit)
        yield Op('sessions', 'create_index', ([('state', 1), ('updated_at', 1)],), {'name': 'state_updated'})
        yield Op('sessions', 'create_index', ([('state', 1), ('evicted_at', 1)],), {'name': 'state_evicted'})
        yield Op('messages', 'create_index', ([('session_id', 1), ('message_id', 1)],),
                 {'unique': True, 'name': 'session_message'})  # fmt: skip
        yield Op('messages', 'create_index', ([('session_id', 1), *MESSAGE_ORDER],), {'name': 'session_in_order'})

    @staticmethod
    def checkpoint_plan(
        session_id: str, snapshot: Mapping[str, Any], messages: Sequence[Mapping[str, Any]] | None, turn_seq: int,
        order: int, tenure: int | None = None,
    ) -> Plan[None]:  # fmt: skip
        """Strict: everything is encoded and size-checked before the first write (InvalidArgument, nothing
        written); refused (nothing written) unless the document is live, of this tenure, and holds no later
        checkpoint; then the messages (ordered, idempotent upserts, never over a newer tenure's) and the session
        document, conditional on the same. The messages count once the document commits their order (see
        `visible`): a checkpoint cut short or refused after them leaves none a reader sees."""
        now = datetime.now(UTC)
        checked = checked_messages(session_id, messages)
        fields: dict[str, Any] = {'snapshot': dict(checked_snapshot(session_id, snapshot)), 'checkpointed_at': now,
                                  'updated_at': now, 'checkpoint_seq': turn_seq}  # fmt: skip
        # Only a live document, and never over a later checkpoint: a replica that paused across an eviction,
        # or behind another replica's checkpoint, must not put an older snapshot in front of a newer one.
        not_later = [{'checkpoint_seq': {'$lte': turn_seq}}, {'checkpoint_seq': {'$exists': False}}]
        condition: dict[str, Any] = {'state': SessionState.LIVE.value, '$or': not_later}
        if tenure is not None:  # and only by the activation or restore it belongs to
            condition['tenure'] = tenure
        current = yield Op('sessions', 'find_one', ({'_id': session_id}, {'state': 1, 'checkpoint_seq': 1,
                                                                          'tenure': 1}))  # fmt: skip
        if current is not None:
            refuse_checkpoint(session_id, current, turn_seq, tenure)
        mine = tenure if tenure is not None else (current or {}).get('tenure')
        writes = [message_write(session_id, message, order, index, mine) for index, message in enumerate(checked)]
        if writes:
            try:
                yield Op('messages', 'bulk_write', (writes,), {'ordered': True})
            except BulkWriteError as exc:
                if _insert_failed(exc):
                    raise
                raise Fenced(f'session {session_id!r}: a message of this checkpoint was written by a newer tenure '
                             f'than {mine}; the checkpoint was not written') from None  # fmt: skip
        update: dict[str, Any] = {'$set': fields, '$setOnInsert': {'state': SessionState.LIVE.value, 'fence': 0}}
        if mine is not None:
            update['$max'] = {f'committed.{mine}': order}
        try:
            yield Op('sessions', 'update_one', ({'_id': session_id, **condition}, update), {'upsert': True})
        except DuplicateKeyError:  # it changed between the read and the write
            found = (yield Op('sessions', 'find_one', ({'_id': session_id},))) or {}
            refuse_checkpoint(session_id, found, turn_seq, tenure)
            raise Fenced(f'session {session_id!r} changed under its checkpoint; nothing of it counts') from None

    @staticmethod
    def mark_plan(marks: Sequence[Mark]) -> Plan[list[MarkOutcome]]:
        """One multi-document conditional update for the whole batch (one journal commit, not one per session).

        When every document of the batch was modified, every mark landed; otherwise the outcomes are read back
        (one read by `_id`), and sessions that need no checkpoint and have no document yet get one inserted. Each
        statement is served from the `_id` index: they cost the batch, not the collection.
        """
        if not marks:
            return []
        now = Mark.evicted_at(marks)
        ids = [mark.record.session_id for mark in marks]
        if len(set(ids)) != len(ids):  # the update pipeline looks each document's values up by its _id
            raise InvalidArgument(f'one eviction batch names a session twice: {sorted(ids)!r}')
        written = yield Op('sessions', 'update_many', (_marks_filter(marks), _marks_update(marks, now)))
        # A document is modified only by its own mark landing (one whose condition fails is replaced by itself,
        # which mongod and the MongoDB-wire server count as a no-op): all modified, all landed.
        if written.modified_count == len(marks):
            return [MarkOutcome.DONE] * len(marks)
        # Which marks landed is read back (by `_id`, as the write): the matched documents include those whose
        # own condition failed, left as they were.
        fences = _find('sessions', {'_id': {'$in': ids}}, {'state': 1, 'fence': 1, 'tenure': 1})
        found = {doc['_id']: doc for doc in (yield fences)}
        if all(mark_outcome(found.get(mark.record.session_id), mark) is MarkOutcome.DONE for mark in marks):
            return [MarkOutcome.DONE] * len(marks)
        missing = [mark for mark in marks if mark.record.session_id not in found and not mark.needs_checkpoint]
        if missing:
            try:  # one created meanwhile (a duplicate key) is left as it is
                yield Op('sessions', 'insert_many', ([_marked_document(mark, now) for mark in missing],),
                         {'ordered': False})  # fmt: skip
            except BulkWriteError as exc:
                if _insert_failed(exc):
                    raise
            found = {doc['_id']: doc for doc in (yield fences)}
        return [mark_outcome(found.get(mark.record.session_id), mark) for mark in marks]

    @staticmethod
    def revert_plan(marks: Sequence[Mark]) -> Plan[None]:
        if marks:
            yield Op('sessions', 'update_many', (
                {'state': SessionState.RESUMABLE.value,
                 '$or': [{'_id': mark.record.session_id, 'fence': mark.token} for mark in marks]},
                {'$set': {'state': SessionState.LIVE.value, 'updated_at': datetime.now(UTC)}},
            ))  # fmt: skip

    @staticmethod
    def fence_off_plan(marks: Sequence[Mark], token: int) -> Plan[None]:
        """Shut a failed eviction write out, wherever it is: each document's fence raised to at least `token`
        (one is created live where none exists, so a late insert of it collides), and one its mark made
        resumable put back to live. One statement per mark by `_id`, in one unordered bulk write."""
        now = datetime.now(UTC)

        def off(mark: Mark) -> UpdateOne:
            marked = {'$and': [{'$eq': ['$state', SessionState.RESUMABLE.value]}, {'$eq': ['$fence', mark.token]}]}
            live = SessionState.LIVE.value
            return UpdateOne({'_id': mark.record.session_id}, [{'$set': {
                'state': {'$cond': [marked, live, {'$ifNull': ['$state', live]}]},
                # Only where this mark's late write could still land (a newer token's fence is not ours to move).
                'fence': {'$cond': [{'$lte': [{'$ifNull': ['$fence', 0]}, mark.token]}, {'$max': ['$fence', token]},
                                    '$fence']},
                'updated_at': now,
            }}], upsert=True)  # fmt: skip

        if marks:
            yield Op('sessions', 'bulk_write', ([off(mark) for mark in marks],), {'ordered': False})

    @staticmethod
    def end_plan(record: SessionRecord, state: SessionState, token: int) -> Plan[bool]:
        now = datetime.now(UTC)
        update = {'$set': {**record_fields(record), 'state': state.value, 'fence': token, 'ended_at': now,
                           'updated_at': now}}  # fmt: skip
        life = {} if record.tenure is None else {'$and': [_no_later_life(record.tenure)]}
        try:
            yield Op('sessions', 'update_one', ({'_id': record.session_id, **_below(token), **life}, update),
                     {'upsert': True})  # fmt: skip
        except DuplicateKeyError:  # a newer token, or a later life, wrote the document: this end is not its last word
            log.warning('%s of %s not recorded: a newer token or life wrote it (token %d)', state.value,
                        record.session_id, token)  # fmt: skip
            if life:
                later = yield Op('sessions', 'find_one', ({'_id': record.session_id, 'tenure': {'$gt': record.tenure},
                                                           'state': {'$ne': state.value}},))  # fmt: skip
                return later is None
        return True

    @staticmethod
    def extend_plan(session_id: str, created_at: datetime, expires_at: datetime) -> Plan[bool]:
        """`$max`: extensions commute, so a late one never moves the deadline back; on this life's document only
        (one written before lives recorded their creation is taken as this life's, in a second write). Plain
        equalities beside `_id` (no `$or`): any MongoDB-wire server serves the write from the `_id` index."""
        update = {'$max': {'expires_at': expires_at}, '$set': {'updated_at': datetime.now(UTC)}}
        states = {'$in': [SessionState.LIVE.value, SessionState.RESUMABLE.value]}
        for life in ({'created_at': created_at}, {'created_at': {'$exists': False}}):
            result = yield Op('sessions', 'update_one', ({'_id': session_id, 'state': states, **life}, update))
            if result.matched_count:
                return True
        return False

    @staticmethod
    def fence_plan(session_id: str, token: int) -> Plan[Mapping[str, Any] | None]:
        try:
            before: Mapping[str, Any] | None = yield Op('sessions', 'find_one_and_update', (
                {'_id': session_id, **_below(token)},
                {'$max': {'fence': token}, '$setOnInsert': {'state': SessionState.LIVE.value}},
            ), {'upsert': True, 'return_document': ReturnDocument.BEFORE})  # fmt: skip
        except DuplicateKeyError:
            before = yield Op('sessions', 'find_one', ({'_id': session_id},))
        return before

    @staticmethod
    def restore_plan(session_id: str, token: int, owner: str) -> Plan[Mapping[str, Any] | None]:
        now = datetime.now(UTC)
        # As it was. Its interrupted_turn stays until the next record write (an eviction, an expiry, a close)
        # replaces it: a restore whose reply was lost can be answered again from it.
        restored: Mapping[str, Any] | None = yield Op('sessions', 'find_one_and_update', (
            {'_id': session_id, 'state': SessionState.RESUMABLE.value, **_below(token)},
            {'$set': {'state': SessionState.LIVE.value, 'fence': token, 'tenure': token, 'owner': owner,
                      'restored_at': now, 'updated_at': now}},
        ), {'return_document': ReturnDocument.BEFORE})  # fmt: skip
        return restored

    @staticmethod
    def load_plan(session_id: str) -> Plan[Mapping[str, Any] | None]:
        document: Mapping[str, Any] | None = yield Op('sessions', 'find_one', ({'_id': session_id},))
        return document

    @staticmethod
    def load_many_plan(session_ids: Sequence[str]) -> Plan[dict[str, Mapping[str, Any]]]:
        found = yield _find(
            'sessions',
            {'_id': {'$in': list(session_ids)}},
            dict.fromkeys(LOAD_MANY_FIELDS, 1),
        )
        return {document['_id']: document for document in found}

    @staticmethod
    def activated_plan(record: SessionRecord, token: int, pool: str) -> Plan[None]:
        now = datetime.now(UTC)
        update = {'$set': {**record_fields(record), 'state': SessionState.LIVE.value, 'fence': token, 'tenure': token,
                           'pool': pool, 'activated_at': now, 'updated_at': now},
                  '$unset': dict.fromkeys(PREVIOUS_LIFE, '')}  # fmt: skip
        # Not over a tombstone whose messages are still being deleted: they would take the new life's with them.
        purged = {'purge_pending': {'$exists': False}}
        try:
            yield Op('sessions', 'update_one', ({'_id': record.session_id, **_not_resumable(), **purged,
                                                 **_below(token)}, update), {'upsert': True})  # fmt: skip
        except DuplicateKeyError:
            found = yield Op('sessions', 'find_one', ({'_id': record.session_id},))
            # The tenure is drawn by the activation in Redis: a resent activate() finds its own life recorded,
            # and leaves it as it is (a checkpoint may have followed it; a failed eviction or a rebuild may have
            # raised its fence since).
            if not (found and found.get('state') == SessionState.LIVE.value and found.get('tenure') == token):
                refuse_activation(record.session_id, found)

    @staticmethod
    def generation_plan(pool: str, generation: str) -> Plan[str]:
        with contextlib.suppress(DuplicateKeyError):  # another process initialised the pool first
            yield Op('pools', 'insert_one', ({'_id': pool, 'generation': generation, 'created_at': datetime.now(UTC)},))
        found = yield Op('pools', 'find_one', ({'_id': pool},))
        return str(found['generation'])

    @staticmethod
    def announce_plan(pool: str, owner: str) -> Plan[None]:
        yield Op('owners', 'update_one', ({'_id': f'{pool}|{owner}'},
                                          {'$set': {'pool': pool, 'owner': owner, 'announced_at': datetime.now(UTC)}}),
                 {'upsert': True})  # fmt: skip

    @staticmethod
    def owners_plan(pool: str) -> Plan[list[str]]:
        found = yield _find('owners', {'pool': pool}, {'owner': 1})
        return sorted(str(document['owner']) for document in found)

    @staticmethod
    def generation_of_plan(pool: str) -> Plan[str | None]:
        found = yield Op('pools', 'find_one', ({'_id': pool},))
        return str(found['generation']) if found is not None else None

    @staticmethod
    def live_plan(pool: str, after: str, limit: int) -> Plan[list[Mapping[str, Any]]]:
        found: list[Mapping[str, Any]] = yield _find(
            'sessions',
            {'state': SessionState.LIVE.value, **_of_pool(pool), '_id': {'$gt': after}},
            sort=[('_id', 1)],
            limit=limit,
        )
        return found

    @staticmethod
    def raise_fences_plan(session_ids: Sequence[str], token: int) -> Plan[None]:
        yield Op('sessions', 'update_many', ({'_id': {'$in': list(session_ids)}}, {'$max': {'fence': token}}))

    @staticmethod
    def resumable_before_plan(pool: str, before: datetime, limit: int) -> Plan[list[str]]:
        found = yield _find('sessions', _retired(pool, before), {'_id': 1}, limit=limit)
        return [str(document['_id']) for document in found]

    @staticmethod
    def delete_resumable_plan(pool: str, before: datetime, limit: int) -> Plan[tuple[int, int]]:
        """Tombstones first (conditional on the same filter: a restore meanwhile wins), then the messages of the
        tombstones still marked `purge_pending`, then the mark: every step repeatable."""
        ids = yield from Plans.resumable_before_plan(pool, before, limit)
        deleted = 0
        if ids:
            now = datetime.now(UTC)
            result = yield Op('sessions', 'update_many', ({'_id': {'$in': ids}, **_retired(pool, before)}, {
                '$set': {'state': SessionState.DELETED.value, 'deleted_at': now, 'updated_at': now,
                         'purge_pending': True},
                '$unset': {'snapshot': ''},
            }))  # fmt: skip
            deleted = result.modified_count
        tombstones = {'state': SessionState.DELETED.value, 'purge_pending': True, **_of_pool(pool)}
        pending = yield _find('sessions', tombstones, {'_id': 1}, limit=limit)
        purged = [str(document['_id']) for document in pending]
        if purged:
            yield Op('messages', 'delete_many', ({'session_id': {'$in': purged}},))
            yield Op('sessions', 'update_many', ({'_id': {'$in': purged}, 'state': SessionState.DELETED.value},
                                                 {'$unset': {'purge_pending': ''}}))  # fmt: skip
        return deleted, len(purged)

    @staticmethod
    def fence_high_plan() -> Plan[int]:
        # Only a fence a token could be, below LIFT_LIMIT: a hand edit's text, array or Decimal128 would crash the
        # rebuild, and 2**62 (or 1e14 - 1) lift the epoch where Lua garbles it, after which every token fails. That
        # document's writes stay fenced off; the pool goes on. (An array's $type is 'array'.)
        token_like = {'$expr': {'$and': [{'$in': [{'$type': '$fence'}, ['int', 'long', 'double']]},
                                         {'$gte': ['$fence', 0]}, {'$lt': ['$fence', LIFT_LIMIT]}]}}  # fmt: skip
        found = yield _find('sessions', token_like, {'fence': 1}, sort=[('fence', -1)], limit=1)
        return int(fence_of(found[0])) if found else 0

    @staticmethod
    def messages_plan(session_id: str) -> Plan[list[dict[str, Any]]]:
        session = yield Op('sessions', 'find_one', ({'_id': session_id}, {'committed': 1}))
        found = yield _find('messages', {'session_id': session_id}, sort=MESSAGE_ORDER)
        return [message['body'] for message in found if visible(session, message)]


def client_options(timeout_ms: int) -> dict[str, Any]:
    """Both clients' options: aware datetimes, and no wait longer than the deadline to find or reach a server."""
    return {'tz_aware': True, 'serverSelectionTimeoutMS': timeout_ms, 'connectTimeoutMS': timeout_ms}


class _Connected:
    """What both stores hold: the collections, their write concern, the deadline of each operation."""

    def __init__(self, client: Any, database: str, timeout_ms: int, write_concern: str) -> None:
        self.client = client
        self.timeout_s = timeout_ms / 1000
        w: int | str = int(write_concern) if write_concern.isascii() and write_concern.isdigit() else write_concern
        db = client.get_database(database, write_concern=WriteConcern(w=w, j=True, wtimeout=timeout_ms))
        self.collections = {name: db[name] for name in COLLECTIONS}
        self.sessions, self.message_docs = self.collections['sessions'], self.collections['messages']

    def _deadline(self, what: str, session_ids: str | Sequence[str], timeout_s: float | None) -> Any:
        """A deadline for the operation (write concern included), as pymongo's timeout context."""
        return pymongo.timeout(timeout_s or self.timeout_s)

    @staticmethod
    def _failed(what: str, session_ids: str | Sequence[str], exc: PyMongoError) -> PersistenceError:
        return PersistenceError(f'MongoDB {what} of {_subject(session_ids)} failed: {exc}', may_land=may_land(exc))


class MongoSnapshotStore(_Connected):
    """The durable source of truth for resumable sessions, on pymongo's `MongoClient`.

    Collections: `sessions` (one document per session, `_id` = session id, fenced by `fence`) and
    `messages` (one document per checkpointed message, unique by session and message id).
    """

    def __init__(
        self,
        url: str,
        database: str = 'lifecycle',
        *,
        timeout_ms: int = 5_000,
        write_concern: str = 'majority',
        client: MongoClient[Document] | None = None,
    ) -> None:
        super().__init__(client or MongoClient(url, **client_options(timeout_ms)), database, timeout_ms, write_concern)

    def close(self) -> None:
        self.client.close()

    @contextmanager
    def _guard(self, what: str, session_ids: str | Sequence[str], timeout_s: float | None = None) -> Iterator[None]:
        """Bound the operation by a deadline and translate driver errors."""
        try:
            with self._deadline(what, session_ids, timeout_s):
                yield
        except PyMongoError as exc:
            raise self._failed(what, session_ids, exc) from exc

    def _run(self, plan: Plan[T], what: str, session_ids: str | Sequence[str], timeout_s: float | None = None) -> T:
        with self._guard(what, session_ids, timeout_s):
            step: Op | Done[T] = advance(plan)
            while not isinstance(step, Done):
                step = self.step(plan, step)
            return step.value

    def step(self, plan: Plan[T], op: Op) -> Op | Done[T]:
        """Run one operation of `plan` and advance it: the result, or the driver's error, goes back into the plan."""
        try:
            result = getattr(self.collections[op.collection], op.method)(*op.args, **op.kwargs)
            result = list(result.sort(op.sort) if op.sort else result) if op.listed else result
        except PyMongoError as exc:
            return advance(plan, error=exc)
        return advance(plan, result)

    def ensure_indexes(self) -> None:
        self._run(Plans.ensure_indexes_plan(), 'index creation', '*')

    def checkpoint(self, session_id: str, snapshot: Mapping[str, Any], messages: Sequence[Mapping[str, Any]] | None,
                   turn_seq: int, order: int, tenure: int | None = None) -> None:  # fmt: skip
        self._run(Plans.checkpoint_plan(session_id, snapshot, messages, turn_seq, order, tenure), 'checkpoint',
                  session_id)  # fmt: skip

    def mark_resumable(self, marks: Sequence[Mark]) -> list[MarkOutcome]:
        return self._run(Plans.mark_plan(marks), 'eviction write', [m.record.session_id for m in marks])

    def revert(self, marks: Sequence[Mark]) -> None:
        self._run(Plans.revert_plan(marks), 'revert', [m.record.session_id for m in marks])

    def fence_off(self, marks: Sequence[Mark], token: int) -> None:
        self._run(Plans.fence_off_plan(marks, token), 'fence', [m.record.session_id for m in marks])

    def end(self, record: SessionRecord, state: SessionState, token: int, timeout_ms: int) -> bool:
        return self._run(Plans.end_plan(record, state, token), f'{state.value} write', record.session_id,
                         timeout_ms / 1000)  # fmt: skip

    def extend(self, session_id: str, created_at: datetime, expires_at: datetime) -> bool:
        return self._run(Plans.extend_plan(session_id, created_at, expires_at), 'deadline write', session_id)

    def raise_fence(self, session_id: str, token: int) -> Mapping[str, Any] | None:
        return self._run(Plans.fence_plan(session_id, token), 'fence', session_id)

    def restore(self, session_id: str, token: int, owner: str) -> Mapping[str, Any] | None:
        return self._run(Plans.restore_plan(session_id, token, owner), 'restore', session_id)

    def load(self, session_id: str) -> Mapping[str, Any] | None:
        return self._run(Plans.load_plan(session_id), 'read', session_id)

    def load_many(self, session_ids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        return self._run(Plans.load_many_plan(session_ids), 'read', session_ids)

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        return self._run(Plans.messages_plan(session_id), 'message read', session_id)

    def activated(self, record: SessionRecord, token: int, pool: str) -> None:
        self._run(Plans.activated_plan(record, token, pool), 'activation record', record.session_id)

    def generation_of(self, pool: str) -> str | None:
        return self._run(Plans.generation_of_plan(pool), 'generation read', pool)

    def claim_generation(self, pool: str, generation: str) -> str:
        return self._run(Plans.generation_plan(pool, generation), 'generation', pool)

    def announce_owner(self, pool: str, owner: str) -> None:
        self._run(Plans.announce_plan(pool, owner), 'heartbeat announcement', owner)

    def heartbeating_owners(self, pool: str) -> list[str]:
        return self._run(Plans.owners_plan(pool), 'read of heartbeating replicas', pool)

    def live_documents(self, pool: str, after: str, limit: int) -> list[Mapping[str, Any]]:
        return self._run(Plans.live_plan(pool, after, limit), 'read of live sessions', pool)

    def highest_fence(self) -> int:
        return self._run(Plans.fence_high_plan(), 'fence read', '*')

    def resumable_before(self, pool: str, before: datetime, limit: int) -> list[str]:
        return self._run(Plans.resumable_before_plan(pool, before, limit), 'read of expired retention', pool)

    def delete_resumable(self, pool: str, before: datetime, limit: int) -> tuple[int, int]:
        return self._run(Plans.delete_resumable_plan(pool, before, limit), 'retention delete', pool)

    def raise_fences(self, session_ids: Sequence[str], token: int) -> None:
        self._run(Plans.raise_fences_plan(session_ids, token), 'fence raise', session_ids)


class AsyncMongoSnapshotStore(_Connected):
    """`MongoSnapshotStore` on pymongo's `AsyncMongoClient`: the same plans, awaited (no worker threads)."""

    def __init__(
        self,
        url: str,
        database: str = 'lifecycle',
        *,
        timeout_ms: int = 5_000,
        write_concern: str = 'majority',
        client: AsyncMongoClient[Document] | None = None,
    ) -> None:
        client = client or AsyncMongoClient(url, **client_options(timeout_ms))
        super().__init__(client, database, timeout_ms, write_concern)

    async def close(self) -> None:
        await self.client.close()

    @asynccontextmanager
    async def _guard(self, what: str, session_ids: str | Sequence[str], timeout_s: float | None = None
                     ) -> AsyncIterator[None]:  # fmt: skip
        try:
            with self._deadline(what, session_ids, timeout_s):
                yield
        except PyMongoError as exc:
            raise self._failed(what, session_ids, exc) from exc

    async def _run(
        self, plan: Plan[T], what: str, session_ids: str | Sequence[str], timeout_s: float | None = None
    ) -> T:
        async with self._guard(what, session_ids, timeout_s):
            step: Op | Done[T] = advance(plan)
            while not isinstance(step, Done):
                try:
                    target = getattr(self.collections[step.collection], step.method)(*step.args, **step.kwargs)
                    cursor = target.sort(step.sort) if step.sort else target
                    result = await cursor.to_list() if step.listed else await target
                except PyMongoError as exc:
                    step = advance(plan, error=exc)
                else:
                    step = advance(plan, result)
            return step.value

    async def ensure_indexes(self) -> None:
        await self._run(Plans.ensure_indexes_plan(), 'index creation', '*')

    async def checkpoint(self, session_id: str, snapshot: Mapping[str, Any],
                         messages: Sequence[Mapping[str, Any]] | None, turn_seq: int, order: int,
                         tenure: int | None = None) -> None:  # fmt: skip
        await self._run(Plans.checkpoint_plan(session_id, snapshot, messages, turn_seq, order, tenure), 'checkpoint',
                        session_id)  # fmt: skip

    async def mark_resumable(self, marks: Sequence[Mark]) -> list[MarkOutcome]:
        return await self._run(Plans.mark_plan(marks), 'eviction write', [m.record.session_id for m in marks])

    async def revert(self, marks: Sequence[Mark]) -> None:
        await self._run(Plans.revert_plan(marks), 'revert', [m.record.session_id for m in marks])

    async def fence_off(self, marks: Sequence[Mark], token: int) -> None:
        await self._run(Plans.fence_off_plan(marks, token), 'fence', [m.record.session_id for m in marks])

    async def end(self, record: SessionRecord, state: SessionState, token: int, timeout_ms: int) -> bool:
        return await self._run(Plans.end_plan(record, state, token), f'{state.value} write', record.session_id,
                        timeout_ms / 1000)  # fmt: skip

    async def extend(self, session_id: str, created_at: datetime, expires_at: datetime) -> bool:
        return await self._run(Plans.extend_plan(session_id, created_at, expires_at), 'deadline write', session_id)

    async def raise_fence(self, session_id: str, token: int) -> Mapping[str, Any] | None:
        return await self._run(Plans.fence_plan(session_id, token), 'fence', session_id)

    async def restore(self, session_id: str, token: int, owner: str) -> Mapping[str, Any] | None:
        return await self._run(Plans.restore_plan(session_id, token, owner), 'restore', session_id)

    async def load(self, session_id: str) -> Mapping[str, Any] | None:
        return await self._run(Plans.load_plan(session_id), 'read', session_id)

    async def load_many(self, session_ids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        return await self._run(Plans.load_many_plan(session_ids), 'read', session_ids)

    async def messages(self, session_id: str) -> list[dict[str, Any]]:
        return await self._run(Plans.messages_plan(session_id), 'message read', session_id)

    async def activated(self, record: SessionRecord, token: int, pool: str) -> None:
        await self._run(Plans.activated_plan(record, token, pool), 'activation record', record.session_id)

    async def generation_of(self, pool: str) -> str | None:
        return await self._run(Plans.generation_of_plan(pool), 'generation read', pool)

    async def claim_generation(self, pool: str, generation: str) -> str:
        return await self._run(Plans.generation_plan(pool, generation), 'generation', pool)

    async def announce_owner(self, pool: str, owner: str) -> None:
        await self._run(Plans.announce_plan(pool, owner), 'heartbeat announcement', owner)

    async def heartbeating_owners(self, pool: str) -> list[str]:
        return await self._run(Plans.owners_plan(pool), 'read of heartbeating replicas', pool)

    async def live_documents(self, pool: str, after: str, limit: int) -> list[Mapping[str, Any]]:
        return await self._run(Plans.live_plan(pool, after, limit), 'read of live sessions', pool)

    async def highest_fence(self) -> int:
        return await self._run(Plans.fence_high_plan(), 'fence read', '*')

    async def resumable_before(self, pool: str, before: datetime, limit: int) -> list[str]:
        return await self._run(Plans.resumable_before_plan(pool, before, limit), 'read of expired retention', pool)

    async def delete_resumable(self, pool: str, before: datetime, limit: int) -> tuple[int, int]:
        return await self._run(Plans.delete_resumable_plan(pool, before, limit), 'retention delete', pool)

    async def raise_fences(self, session_ids: Sequence[str], token: int) -> None:
        await self._run(Plans.raise_fences_plan(session_ids, token), 'fence raise', session_ids)
