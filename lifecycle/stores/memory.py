"""InMemorySnapshotStore: the SnapshotStore contract in one process's memory, for tests and local runs.

It keeps MongoSnapshotStore's rules exactly (fences, conditional marks, checkpoint coverage, strict
checkpoints), so the eviction and sweep suites run over both and the contract stays honest on each:
the fast loop covers eviction logic without a server. Nothing here is durable; never use it in production.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from lifecycle.errors import Fenced, InvalidArgument
from lifecycle.models import SessionState
from lifecycle.stores.base import Mark, MarkOutcome, SessionRecord
from lifecycle.stores.documents import checked_messages, checked_snapshot
from lifecycle.stores.mongo import (
    LOAD_MANY_FIELDS,
    PREVIOUS_LIFE,
    fence_of,
    later_life,
    mark_outcome,
    record_fields,
    refuse_activation,
    refuse_checkpoint,
    visible,
)
from lifecycle.validate import LIFT_LIMIT

Document = dict[str, Any]
EVICTABLE = (SessionState.LIVE.value, SessionState.RESUMABLE.value)


def below(document: Mapping[str, Any], token: int) -> bool:
    """The document's fence is older than `token` (or it has none yet)."""
    return fence_of(document) < token


class InMemorySnapshotStore:
    """Session documents and messages in dictionaries, every operation atomic under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, Document] = {}
        self._messages: dict[str, dict[object, dict[str, Any]]] = {}  # session -> message id -> stored message
        self._pools: dict[str, str] = {}
        self._owners: dict[str, set[str]] = {}  # pool -> replicas that heartbeat

    def close(self) -> None:
        """Nothing to disconnect."""

    def ensure_indexes(self) -> None:
        """No indexes to create."""

    def checkpoint(
        self,
        session_id: str,
        snapshot: Mapping[str, Any],
        messages: Sequence[Mapping[str, Any]] | None,
        turn_seq: int,
        order: int,
        tenure: int | None = None,
    ) -> None:
        checked = checked_messages(session_id, messages)
        snapshot = checked_snapshot(session_id, snapshot)
        now = datetime.now(UTC)
        with self._lock:
            current = self._sessions.get(session_id)
            if current is not None:
                refuse_checkpoint(session_id, current, turn_seq, tenure)
            mine = tenure if tenure is not None else (current or {}).get('tenure')
            stored = self._messages.setdefault(session_id, {})
            newer = [m['id'] for m in checked if m['id'] in stored and (stored[m['id']].get('written_by') or 0) >
                     (mine if mine is not None else float('inf'))]  # fmt: skip
            if newer:
                raise Fenced(f'session {session_id!r}: a message of this checkpoint was written by a newer tenure '
                             f'than {mine}; the checkpoint was not written')  # fmt: skip
            for index, message in enumerate(checked):
                entry = stored.get(message['id']) or {'order': order, 'index': index, 'tenure': mine}
                stored[message['id']] = {**entry, 'body': copy.deepcopy(dict(message)), 'written_by': mine}
            document = self._sessions.setdefault(session_id, {'_id': session_id, 'state': 'live', 'fence': 0})
            document.update(snapshot=copy.deepcopy(dict(snapshot)), checkpointed_at=now, updated_at=now,
                            checkpoint_seq=turn_seq)  # fmt: skip
            if mine is not None:
                committed = document.setdefault('committed', {})
                committed[str(mine)] = max(committed.get(str(mine), order), order)

    def mark_resumable(self, marks: Sequence[Mark]) -> list[MarkOutcome]:
        ids = [mark.record.session_id for mark in marks]
        if len(set(ids)) != len(ids):
            raise InvalidArgument(f'one eviction batch names a session twice: {sorted(ids)!r}')
        now = Mark.evicted_at(marks)
        outcomes = []
        with self._lock:
            for mark in marks:
                document = self._sessions.get(mark.record.session_id)
                if document is None and not mark.needs_checkpoint:
                    document = self._sessions[mark.record.session_id] = {'_id': mark.record.session_id}
                elif document is None or not self._may_mark(document, mark):
                    outcomes.append(mark_outcome(document, mark))
                    continue
                document.update(record_fields(mark.record), state=SessionState.RESUMABLE.value, fence=mark.token,
                                reason=mark.reason.value, checkpoint_waived=mark.waived, evicted_at=now,
                                updated_at=now)  # fmt: skip
                outcomes.append(MarkOutcome.DONE)
        return outcomes

    @staticmethod
    def _may_mark(document: Mapping[str, Any], mark: Mark) -> bool:
        """MongoSnapshotStore's filter: still live (or resumable), an older fence, and a covering checkpoint."""
        held = document.get('checkpoint_seq')
        covered = not mark.needs_checkpoint or (held is not None and held >= mark.record.turn_seq)
        return (document.get('state') in EVICTABLE and below(document, mark.token) and covered
                and not later_life(document, mark.record.tenure))  # fmt: skip

    def revert(self, marks: Sequence[Mark]) -> None:
        now = datetime.now(UTC)
        with self._lock:
            for mark in marks:
                document = self._sessions.get(mark.record.session_id)
                if document and document.get('state') == SessionState.RESUMABLE and document['fence'] == mark.token:
                    document.update(state=SessionState.LIVE.value, updated_at=now)

    def fence_off(self, marks: Sequence[Mark], token: int) -> None:
        now = datetime.now(UTC)
        with self._lock:
            for mark in marks:
                document = self._sessions.setdefault(mark.record.session_id, {'_id': mark.record.session_id})
                if document.get('state') == SessionState.RESUMABLE and document.get('fence') == mark.token:
                    document['state'] = SessionState.LIVE.value
                document.setdefault('state', SessionState.LIVE.value)
                fence = fence_of(document)
                if fence <= mark.token:  # a newer token's fence (or outside damage) is not ours to move
                    document['fence'] = max(int(fence), token)
                document['updated_at'] = now

    def end(self, record: SessionRecord, state: SessionState, token: int, timeout_ms: int) -> bool:
        now = datetime.now(UTC)
        with self._lock:
            document = self._sessions.setdefault(record.session_id, {'_id': record.session_id})
            later = later_life(document, record.tenure)
            if below(document, token) and not later:
                document.update(record_fields(record), state=state.value, fence=token, ended_at=now, updated_at=now)
            return not (later and document.get('state') != state.value)

    def extend(self, session_id: str, created_at: datetime, expires_at: datetime) -> bool:
        with self._lock:
            document = self._sessions.get(session_id)
            if document is None or document.get('state') not in EVICTABLE:
                return False
            if document.get('created_at', created_at) != created_at:
                return False
            document.update(expires_at=max(document.get('expires_at', expires_at), expires_at),
                            updated_at=datetime.now(UTC))  # fmt: skip
            return True

    def raise_fence(self, session_id: str, token: int) -> Mapping[str, Any] | None:
        with self._lock:
            document = self._sessions.get(session_id)
            if document is None:
                self._sessions[session_id] = {'_id': session_id, 'state': SessionState.LIVE.value, 'fence': token}
                return None
            before = copy.deepcopy(document)
            if below(document, token):
                document['fence'] = token
            return before

    def restore(self, session_id: str, token: int, owner: str) -> Mapping[str, Any] | None:
        now = datetime.now(UTC)
        with self._lock:
            document = self._sessions.get(session_id)
            if document is None or document.get('state') != SessionState.RESUMABLE or not below(document, token):
                return None
            before = copy.deepcopy(document)
            document.update(state=SessionState.LIVE.value, fence=token, tenure=token, owner=owner, restored_at=now,
                            updated_at=now)  # fmt: skip
            return before

    def load(self, session_id: str) -> Mapping[str, Any] | None:
        with self._lock:
            document = self._sessions.get(session_id)
            return copy.deepcopy(document) if document is not None else None

    def load_many(self, session_ids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        with self._lock:
            return {
                session_id: {key: self._sessions[session_id].get(key) for key in LOAD_MANY_FIELDS
                             if key in self._sessions[session_id]}
                for session_id in session_ids
                if session_id in self._sessions
            }  # fmt: skip

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        with self._lock:
            document = self._sessions.get(session_id)
            stored = sorted(self._messages.get(session_id, {}).values(), key=lambda e: (e['order'], e['index']))
            return [copy.deepcopy(entry['body']) for entry in stored if visible(document, entry)]

    def activated(self, record: SessionRecord, token: int, pool: str) -> None:
        now = datetime.now(UTC)
        with self._lock:
            document = self._sessions.get(record.session_id)
            if document is not None and document.get('state') == SessionState.LIVE and document.get('tenure') == token:
                return  # a resend: its own life, left as it is
            if document is not None and (document.get('state') == SessionState.RESUMABLE or not below(document, token)):
                refuse_activation(record.session_id, copy.deepcopy(document))
            document = self._sessions.setdefault(record.session_id, {'_id': record.session_id})
            for name in PREVIOUS_LIFE:
                document.pop(name, None)
            document.update(record_fields(record), state=SessionState.LIVE.value, fence=token, tenure=token, pool=pool,
                            activated_at=now, updated_at=now)  # fmt: skip

    def generation_of(self, pool: str) -> str | None:
        with self._lock:
            return self._pools.get(pool)

    def claim_generation(self, pool: str, generation: str) -> str:
        with self._lock:
            return self._pools.setdefault(pool, generation)

    def announce_owner(self, pool: str, owner: str) -> None:
        with self._lock:
            self._owners.setdefault(pool, set()).add(owner)

    def heartbeating_owners(self, pool: str) -> list[str]:
        with self._lock:
            return sorted(self._owners.get(pool, set()))

    def live_documents(self, pool: str, after: str, limit: int) -> list[Mapping[str, Any]]:
        with self._lock:
            # A document without a pool was written before activations named theirs (an upgraded pool's).
            mine = (i for i, d in self._sessions.items() if d.get('state') == SessionState.LIVE and i > after
                    and d.get('pool', pool) == pool)  # fmt: skip
            live = sorted(mine)
            return [copy.deepcopy(self._sessions[i]) for i in live[:limit]]

    def raise_fences(self, session_ids: Sequence[str], token: int) -> None:
        with self._lock:
            for session_id in session_ids:
                if session_id in self._sessions:
                    document = self._sessions[session_id]
                    if fence_of(document) < token:  # as MongoDB's $max: outside damage is kept
                        document['fence'] = token

    def resumable_before(self, pool: str, before: datetime, limit: int) -> list[str]:
        with self._lock:
            return self._retired(pool, before)[:limit]

    def _retired(self, pool: str, before: datetime) -> list[str]:
        return sorted(i for i, d in self._sessions.items() if d.get('state') == SessionState.RESUMABLE
                      and 'evicted_at' in d and d['evicted_at'] < before and d.get('pool', pool) == pool)  # fmt: skip

    def delete_resumable(self, pool: str, before: datetime, limit: int) -> tuple[int, int]:
        now = datetime.now(UTC)
        with self._lock:
            retired = self._retired(pool, before)[:limit]
            for session_id in retired:
                document = self._sessions[session_id]
                document.pop('snapshot', None)
                document.update(state=SessionState.DELETED.value, deleted_at=now, updated_at=now)
                self._messages.pop(session_id, None)
            return len(retired), len(retired)

    def highest_fence(self) -> int:
        with self._lock:
            fences = [fence_of(d) for d in self._sessions.values()]  # a token's only, as MongoDB's $lt reads them
            return max((int(f) for f in fences if 0 <= f < LIFT_LIMIT), default=0)
