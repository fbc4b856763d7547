"""How a session maps to and from its MongoDB document."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import bson
from bson.errors import InvalidDocument

from lifecycle.errors import InvalidArgument
from lifecycle.models import InterruptedTurn, SessionInfo, SessionState, to_datetime, to_epoch_ms
from lifecycle.stores.base import SessionRecord

# MongoDB's maxBsonObjectSize is 16 MiB; a checkpoint's document also carries its own fields (times, ids,
# state), so what the app hands in must leave them room.
MAX_STORED_BYTES = 16 * 1024 * 1024 - 64 * 1024
MAX_NESTING = 90  # MongoDB refuses documents nested more than 100 deep; ours wrap the app's in a few levels


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


def interrupted_fields(turn: InterruptedTurn | None) -> dict[str, Any] | None:
    """The document's `interrupted_turn`: None when no turn was cut off."""
    if turn is None:
        return None
    started = to_datetime(turn.started_at_ms) if turn.started_at_ms else None
    return {'seq': turn.seq, 'started_at': started, 'owner': turn.owner}


def interrupted_of(document: Mapping[str, Any]) -> InterruptedTurn | None:
    """The turn the document says its session's end cut off; None if none (or the field is unreadable)."""
    turn = document.get('interrupted_turn')
    if not isinstance(turn, Mapping):
        return None
    try:
        started = turn.get('started_at')
        return InterruptedTurn(int(turn['seq']), to_epoch_ms(started) if isinstance(started, datetime) else 0,
                               str(turn.get('owner', '')))  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None


def record_of(info: SessionInfo) -> SessionRecord:
    """What MongoDB keeps of a session, from what Redis knew of it."""
    return SessionRecord(
        session_id=info.session_id,
        owner=info.owner,
        tenant=info.tenant,
        profile=info.profile,
        created_at=info.created_at,
        last_active_at=info.last_active,
        expires_at=info.expires_at,
        turn_seq=info.turn_seq,
        tenure=info.tenure,
    )


def info_from_document(document: Mapping[str, Any] | None) -> SessionInfo | None:
    """A session no longer live, as its MongoDB document describes it; None unless resumable or ended."""
    if document is None or document.get('state') not in (SessionState.RESUMABLE, SessionState.EXPIRED,
                                                         SessionState.CLOSED, SessionState.DELETED):  # fmt: skip
        return None
    return SessionInfo(
        session_id=document['_id'],
        state=SessionState(document['state']),
        owner=document.get('owner', ''),
        tenant=document.get('tenant'),
        profile=document.get('profile'),
        created_at_ms=to_epoch_ms(document['created_at']) if 'created_at' in document else 0,
        last_active_ms=to_epoch_ms(document['last_active_at']) if 'last_active_at' in document else 0,
        expires_at_ms=to_epoch_ms(document['expires_at']) if 'expires_at' in document else 0,
        busy=False,
        turn_seq=int(document.get('turn_seq', 0)),
        interrupted_turn=interrupted_of(document),
    )
