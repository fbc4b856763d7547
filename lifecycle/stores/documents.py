"""How a session maps to and from its MongoDB document."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from lifecycle.models import InterruptedTurn, SessionInfo, SessionState, to_datetime, to_epoch_ms
from lifecycle.stores.base import SessionRecord


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
