"""MongoSnapshotStore: session documents and messages in MongoDB, every write `w: majority, j: true`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import bson
import pymongo
from bson.errors import InvalidDocument
from pymongo import MongoClient, ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError
from pymongo.write_concern import WriteConcern

from lifecycle.errors import Fenced, InvalidArgument, PersistenceError, SessionNotLive
from lifecycle.models import SessionState
from lifecycle.stores.base import Mark, MarkOutcome, SessionRecord

Document = dict[str, Any]
DUPLICATE_KEY = 11000
# MongoDB's maxBsonObjectSize is 16 MiB; a checkpoint's document also carries its own fields (times, ids,
# state), so what the app hands in must leave them room.
MAX_STORED_BYTES = 16 * 1024 * 1024 - 64 * 1024
MAX_NESTING = 90  # MongoDB refuses documents nested more than 100 deep; ours wrap the app's in a few levels
MARK_INDEX = '_lifecycle_mark'  # scratch field of the eviction update pipeline, removed by its last stage


def _below(token: int) -> dict[str, Any]:
    """Filter: the session's fence is older than `token` (or it has none yet)."""
    return {'$or': [{'fence': {'$lt': token}}, {'fence': {'$exists': False}}]}


def _subject(session_ids: str | Sequence[str]) -> str:
    """'session 's1'', or '40 sessions ('s1', ...)' for a batch."""
    if isinstance(session_ids, str) or len(session_ids) == 1:
        return f'session {session_ids if isinstance(session_ids, str) else session_ids[0]!r}'
    return f'{len(session_ids)} sessions ({session_ids[0]!r}, ...)'


def _marks_filter(marks: Sequence[Mark]) -> dict[str, Any]:
    """The eviction write's condition, per session: still live (or resumable), a fence older than its
    token and, if it needs one, a checkpoint covering its last finished turn."""
    branches = []
    for mark in marks:
        branch = {'_id': mark.record.session_id, **_below(mark.token)}
        if mark.needs_checkpoint:
            branch['checkpoint_seq'] = {'$gte': mark.record.turn_seq}
        branches.append(branch)
    return {
        '_id': {'$in': [mark.record.session_id for mark in marks]},
        'state': {'$in': [SessionState.LIVE.value, SessionState.RESUMABLE.value]},
        '$or': branches,
    }


def _marks_update(marks: Sequence[Mark], now: datetime) -> list[dict[str, Any]]:
    """An update pipeline giving each matched document its own mark's values, looked up by `_id`."""
    ids = [mark.record.session_id for mark in marks]
    values = [{**record_fields(m.record), 'fence': m.token, 'reason': m.reason.value, 'checkpoint_waived': m.waived}
              for m in marks]  # fmt: skip
    own = {name: {'$arrayElemAt': [{'$literal': [v[name] for v in values]}, f'${MARK_INDEX}']} for name in values[0]}
    return [
        {'$set': {MARK_INDEX: {'$indexOfArray': [{'$literal': ids}, '$_id']}}},
        {'$set': {
            **own,
            'state': SessionState.RESUMABLE.value,
            'evicted_at': now,
            'updated_at': now,
        }},
        {'$unset': MARK_INDEX},
    ]  # fmt: skip


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


def nesting_depth(value: Any, limit: int) -> int:
    """How deeply documents and arrays nest in `value`, counted up to `limit + 1` (no deeper: never recursion)."""
    deepest, level = 0, [value]
    while level and deepest <= limit:
        level = [child for item in level if isinstance(item, Mapping | list | tuple)
                 for child in (item.values() if isinstance(item, Mapping) else item)]  # fmt: skip
        deepest += 1 if level else 0
    return deepest


def encoded_size(what: str, document: Mapping[str, Any]) -> int:
    """How many bytes of BSON `document` takes; InvalidArgument, naming `what`, if MongoDB could not store it."""
    if nesting_depth(document, MAX_NESTING) > MAX_NESTING:
        raise InvalidArgument(f'{what} nests deeper than the {MAX_NESTING} levels MongoDB stores')
    try:
        size = len(bson.encode(document))
    except (InvalidDocument, TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise InvalidArgument(f'{what} cannot be stored in MongoDB: {exc}') from exc
    if size > MAX_STORED_BYTES:
        raise InvalidArgument(f'{what} is {size:,} bytes of BSON; one MongoDB document holds {MAX_STORED_BYTES:,}')
    return size


def checked_snapshot(session_id: str, snapshot: object) -> Mapping[str, Any]:
    """The snapshot, if it is a mapping MongoDB can store whole in the session document."""
    if not isinstance(snapshot, Mapping):
        raise InvalidArgument(f'snapshot of session {session_id!r} must be a mapping, got {type(snapshot).__name__}')
    encoded_size(f'the snapshot of session {session_id!r}', {'snapshot': snapshot})
    return snapshot


def checked_messages(session_id: str, messages: object) -> list[Mapping[str, Any]]:
    """The messages, if each is a mapping with a unique scalar "id" that MongoDB can store."""
    if messages is None:
        return []
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise InvalidArgument(f'messages of session {session_id!r} must be a list of mappings, got {messages!r:.80}')
    seen: set[object] = set()
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidArgument(f'message {index} of session {session_id!r} is not a mapping: {message!r:.80}')
        message_id = message.get('id')
        if isinstance(message_id, bool) or not isinstance(message_id, str | int):
            raise InvalidArgument(f'message {dict(message)!r:.120} of session {session_id!r} needs an "id" (a string '
                                  'or an integer)')  # fmt: skip
        if message_id in seen:
            raise InvalidArgument(f'message id {message_id!r} appears twice in one checkpoint of {session_id!r}')
        seen.add(message_id)
        encoded_size(f'message {message_id!r} of session {session_id!r}', {'body': message})
    return list(messages)


def refuse_checkpoint(session_id: str, document: Mapping[str, Any], turn_seq: int) -> None:
    """Raise if a checkpoint at `turn_seq` must not be written over `document`."""
    state = document.get('state')
    if state != SessionState.LIVE.value:
        raise SessionNotLive(f'session {session_id!r} is {state} in MongoDB (evicted or ended meanwhile); '
                             'the checkpoint was not written')  # fmt: skip
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
    }


def mark_outcome(document: Mapping[str, Any] | None, token: int) -> MarkOutcome:
    """How one mark of a batch ended, from the document as it is now (`fence` is unique to each claim)."""
    if document is None:
        return MarkOutcome.NOT_CHECKPOINTED
    if document.get('state') == SessionState.RESUMABLE and document.get('fence') == token:
        return MarkOutcome.DONE
    if document.get('state') in (SessionState.EXPIRED.value, SessionState.CLOSED.value):
        return MarkOutcome.ENDED
    if document.get('fence', 0) >= token:
        return MarkOutcome.FENCED
    return MarkOutcome.NOT_CHECKPOINTED


class MongoSnapshotStore:
    """The durable source of truth for resumable sessions.

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
        self.client: MongoClient[Document] = client or MongoClient(
            url, tz_aware=True, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
        )
        self.timeout_s = timeout_ms / 1000
        w: int | str = int(write_concern) if write_concern.isdigit() else write_concern
        db = self.client.get_database(database, write_concern=WriteConcern(w=w, j=True, wtimeout=timeout_ms))
        self.sessions: Collection[Document] = db['sessions']
        self.message_docs: Collection[Document] = db['messages']

    def close(self) -> None:
        self.client.close()

    @contextmanager
    def _guard(self, what: str, session_ids: str | Sequence[str], timeout_s: float | None = None) -> Iterator[None]:
        """Bound the operation by a deadline (write concern included) and translate driver errors."""
        try:
            with pymongo.timeout(timeout_s or self.timeout_s):
                yield
        except PyMongoError as exc:
            raise PersistenceError(f'MongoDB {what} of {_subject(session_ids)} failed: {exc}') from exc

    def ensure_indexes(self) -> None:
        with self._guard('index creation', '*'):
            self.sessions.create_index([('state', 1), ('updated_at', 1)], name='state_updated')
            self.message_docs.create_index([('session_id', 1), ('message_id', 1)], unique=True, name='session_message')
            self.message_docs.create_index([('session_id', 1), ('batch_ns', 1), ('index', 1)], name='session_order')

    def checkpoint(
        self,
        session_id: str,
        snapshot: Mapping[str, Any],
        messages: Sequence[Mapping[str, Any]] | None,
        turn_seq: int,
    ) -> None:
        """Strict: everything is encoded and size-checked before the first write (InvalidArgument, nothing
        written); refused (nothing written) unless the document is live and holds no later checkpoint; then
        the messages (ordered, idempotent upserts) and the session document, conditional on the same."""
        now = datetime.now(UTC)
        batch_ns = time.time_ns()
        writes = [
            UpdateOne(
                {'session_id': session_id, 'message_id': message['id']},
                {'$set': {'body': dict(message)}, '$setOnInsert': {'batch_ns': batch_ns, 'index': index}},
                upsert=True,
            )
            for index, message in enumerate(checked_messages(session_id, messages))
        ]
        fields: dict[str, Any] = {'snapshot': dict(checked_snapshot(session_id, snapshot)), 'checkpointed_at': now,
                                  'updated_at': now, 'checkpoint_seq': turn_seq}  # fmt: skip
        # Only a live document, and never over a later checkpoint: a replica that paused across an eviction,
        # or behind another replica's checkpoint, must not put an older snapshot in front of a newer one.
        not_later = [{'checkpoint_seq': {'$lte': turn_seq}}, {'checkpoint_seq': {'$exists': False}}]
        condition = {'state': SessionState.LIVE.value, '$or': not_later}
        with self._guard('checkpoint', session_id):
            current = self.sessions.find_one({'_id': session_id}, {'state': 1, 'checkpoint_seq': 1})
            if current is not None:
                refuse_checkpoint(session_id, current, turn_seq)
            if writes:
                self.message_docs.bulk_write(writes, ordered=True)
            try:
                self.sessions.update_one(
                    {'_id': session_id, **condition},
                    {'$set': fields, '$setOnInsert': {'state': SessionState.LIVE.value, 'fence': 0}},
                    upsert=True,
                )
            except DuplicateKeyError:  # it changed between the read and the write
                refuse_checkpoint(session_id, self.sessions.find_one({'_id': session_id}) or {}, turn_seq)

    def mark_resumable(self, marks: Sequence[Mark]) -> list[MarkOutcome]:
        """One multi-document conditional update for the whole batch (one journal commit, not one per session).

        Outcomes are read back only when some mark did not land; sessions that need no checkpoint and have
        no document yet get one inserted.
        """
        if not marks:
            return []
        now = datetime.now(UTC)
        ids = [mark.record.session_id for mark in marks]
        if len(set(ids)) != len(ids):  # the update pipeline looks each document's values up by its _id
            raise InvalidArgument(f'one eviction batch names a session twice: {sorted(ids)!r}')
        with self._guard('eviction write', ids):
            landed = self.sessions.update_many(_marks_filter(marks), _marks_update(marks, now))
            if landed.matched_count == len(marks):
                return [MarkOutcome.DONE] * len(marks)
            found = self._fences(ids)
            missing = [mark for mark in marks if mark.record.session_id not in found and not mark.needs_checkpoint]
            if missing:
                self._insert_new([_marked_document(mark, now) for mark in missing])
                found = self._fences(ids)
            return [mark_outcome(found.get(mark.record.session_id), mark.token) for mark in marks]

    def _fences(self, ids: Sequence[str]) -> dict[str, Document]:
        return {doc['_id']: doc for doc in self.sessions.find({'_id': {'$in': list(ids)}}, {'state': 1, 'fence': 1})}

    def _insert_new(self, documents: Sequence[Document]) -> None:
        """Insert documents that did not exist; one created meanwhile (a duplicate key) is left as it is."""
        try:
            self.sessions.insert_many(documents, ordered=False)
        except BulkWriteError as exc:
            details = exc.details
            if details.get('writeConcernErrors') or any(e.get('code') != DUPLICATE_KEY
                                                         for e in details.get('writeErrors', ())):  # fmt: skip
                raise

    def revert(self, marks: Sequence[Mark]) -> None:
        if not marks:
            return
        ids = [mark.record.session_id for mark in marks]
        with self._guard('revert', ids):
            self.sessions.update_many(
                {'state': SessionState.RESUMABLE.value,
                 '$or': [{'_id': mark.record.session_id, 'fence': mark.token} for mark in marks]},
                {'$set': {'state': SessionState.LIVE.value, 'updated_at': datetime.now(UTC)}},
            )  # fmt: skip

    def end(self, record: SessionRecord, state: SessionState, token: int, timeout_ms: int) -> None:
        now = datetime.now(UTC)
        update = {
            '$set': {**record_fields(record), 'state': state.value, 'fence': token, 'ended_at': now, 'updated_at': now}
        }
        # A DuplicateKeyError means a newer token wrote the document already: nothing to do.
        with (
            self._guard(f'{state.value} write', record.session_id, timeout_ms / 1000),
            contextlib.suppress(DuplicateKeyError),
        ):
            self.sessions.update_one({'_id': record.session_id, **_below(token)}, update, upsert=True)

    def raise_fence(self, session_id: str, token: int) -> Mapping[str, Any] | None:
        with self._guard('fence', session_id):
            try:
                return self.sessions.find_one_and_update(
                    {'_id': session_id, **_below(token)},
                    {'$max': {'fence': token}, '$setOnInsert': {'state': SessionState.LIVE.value}},
                    upsert=True,
                    return_document=ReturnDocument.BEFORE,
                )
            except DuplicateKeyError:
                return self.sessions.find_one({'_id': session_id})

    def restore(self, session_id: str, token: int, owner: str) -> Mapping[str, Any] | None:
        now = datetime.now(UTC)
        with self._guard('restore', session_id):
            return self.sessions.find_one_and_update(
                {'_id': session_id, 'state': SessionState.RESUMABLE.value, **_below(token)},
                {'$set': {'state': SessionState.LIVE.value, 'fence': token, 'owner': owner, 'restored_at': now,
                          'updated_at': now}},
                return_document=ReturnDocument.AFTER,
            )  # fmt: skip

    def load(self, session_id: str) -> Mapping[str, Any] | None:
        with self._guard('read', session_id):
            return self.sessions.find_one({'_id': session_id})

    def load_many(self, session_ids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        with self._guard('read', session_ids):
            found = self.sessions.find({'_id': {'$in': list(session_ids)}}, {'state': 1, 'checkpoint_seq': 1})
            return {document['_id']: document for document in found}

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        with self._guard('message read', session_id):
            cursor = self.message_docs.find({'session_id': session_id}).sort([('batch_ns', 1), ('index', 1)])
            return [doc['body'] for doc in cursor]
