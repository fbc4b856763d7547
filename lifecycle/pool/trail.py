"""The decision trail: why a session was kept or reaped, and what last stamped its activity.

Each live session may have one field in the `{lc}:trail` hash: 'source;entry;entry...'. The source is what
last stamped its activity ('touch@api-2', 'turn_end@api-1', 'activate@api-1'; '' until something did), each
entry one decision a sweep or an eviction made ('at_ms,decision,reason,detail,count'), oldest first, at most
`trail_length` of them: a decision equal to the last one (kept busy, sweep after sweep) moves its time and
counts, instead of pushing the others out. The field leaves with the session (its last trail goes to MongoDB
with the eviction or expiry write), so the trail costs the sessions with decisions, bounded per session.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lifecycle.models import to_datetime, to_epoch_ms
from lifecycle.pool.calls import Arg, Call, as_int
from lifecycle.pool.keys import Keys

MAX_DETAIL = 48
_UNSAFE = re.compile(r'[^A-Za-z0-9._:@=+ -]')  # the entry's own separators (',' ';') never get in


@dataclass(frozen=True)
class Decision:
    """One decision about a session: `decision` (kept, aborted, claimed, evicted, expired, rolled_back,
    skipped, warned) for `reason` (idle, lru, ...), with why (`detail`: busy, not_checkpointed, pinned, ...);
    `count` times in a row, the last at `at_ms`."""

    at_ms: int
    decision: str
    reason: str
    detail: str = ''
    count: int = 1

    def as_document(self) -> dict[str, Any]:
        return {'at': to_datetime(self.at_ms), 'decision': self.decision, 'reason': self.reason,
                'detail': self.detail, 'count': self.count}  # fmt: skip


@dataclass(frozen=True)
class Trail:
    """A session's last decisions (oldest first) and what last stamped its activity ('' not known)."""

    source: str
    decisions: tuple[Decision, ...]

    def as_document(self) -> dict[str, Any]:
        return {'source': self.source, 'decisions': [d.as_document() for d in self.decisions]}


def safe_detail(detail: str) -> str:
    """A detail as an entry may hold it: short, without the entry's separators."""
    return _UNSAFE.sub('_', detail)[:MAX_DETAIL]


def entry(decision: str, reason: str, detail: str = '') -> str:
    """'decision,reason,detail': an entry without its time and count (the script adds them)."""
    return f'{decision},{reason},{safe_detail(detail)}'


def unpack(packed: str | None) -> Trail | None:
    """The trail of a packed field; entries it cannot read (a hand edit) are left out."""
    if packed is None:
        return None
    source, *entries = packed.split(';')
    decisions = []
    for part in entries:
        fields = part.split(',')
        if len(fields) == 5 and all(f.isascii() and f.isdigit() for f in (fields[0], fields[4])):  # not '²'
            decisions.append(Decision(int(fields[0]), fields[1], fields[2], fields[3], int(fields[4])))
    return Trail(source, tuple(decisions))


def trail_of_document(found: Any) -> Trail | None:
    """A trail as a session document keeps it (see `Trail.as_document`); None if absent or unreadable."""
    if not isinstance(found, dict):
        return None
    decisions = []
    for item in found.get('decisions') or ():
        try:
            at = item['at']
            decisions.append(Decision(to_epoch_ms(at), str(item['decision']), str(item['reason']),
                                      str(item.get('detail', '')), int(item.get('count', 1))))  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return Trail(str(found.get('source', '')), tuple(decisions))


class TrailIndex:
    """The Redis calls of the trail."""

    def __init__(self, keys: Keys, length: int) -> None:
        self.keys = keys
        self.length = length

    def appends(self, now_ms: int, entries: Sequence[tuple[str, str]]) -> list[Call[int]]:
        """The call recording each (session_id, entry) at `now_ms` for the sessions still live (it returns how
        many); none when there is nothing to record or the trail is off."""
        if not entries or not self.length:
            return []
        args: list[Arg] = [self.length, now_ms]
        for session_id, text in entries:
            args += [session_id, text]
        return [Call(as_int, 'append_trail', (self.keys.trail, self.keys.live), tuple(args))]

    def read(self, session_id: str) -> Call[Trail | None]:
        return Call(unpack, command=('HGET', self.keys.trail, session_id))
