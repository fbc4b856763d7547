"""Checks on identifiers that callers hand to lifecycle, each failing with the bad value named."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from lifecycle.errors import InvalidArgument

# Ids end up inside Redis keys, packed records ('|'-separated) and MongoDB _ids: no separators,
# no braces (they would break the hash tag), no whitespace.
_ID = re.compile(r'[A-Za-z0-9][A-Za-z0-9._:@=+-]{0,127}')
# Many ids at once, joined by a newline (which no id holds): one match in C instead of one per id.
_IDS = re.compile(f'(?:{_ID.pattern}\n)*{_ID.pattern}')
MAX_ID_LENGTH = 128
_STREAM_ID = re.compile(r'([0-9]{1,20})(?:-([0-9]{1,20}))?')
# Fencing tokens stay below this: Lua prints a number with 14 significant digits, so the epoch is never lifted
# to one it would garble (see rebuild.py).
TOKEN_LIMIT = 10**14
# The epoch is lifted to a fence MongoDB holds only below this, so the tokens after it stay below TOKEN_LIMIT (tokens
# start from Redis's clock in ms: about 1.8e12 in 2026). A fence above it is outside damage.
LIFT_LIMIT = TOKEN_LIMIT // 10
MAX_WAIT_S = 3600  # a blocking read longer than an hour is a mistake (and holds a connection that long)


def identifier(kind: str, value: object) -> str:
    """Return `value` if it is a valid id of the given kind ('session_id', 'owner', ...)."""
    if not isinstance(value, str):
        raise InvalidArgument(f'{kind} must be a string, got {type(value).__name__} {value!r}')
    if not _ID.fullmatch(value):
        raise InvalidArgument(
            f'{kind} {value!r} is invalid: use 1..{MAX_ID_LENGTH} characters from A-Z a-z 0-9 . _ : @ = + -, '
            'starting with a letter or digit'
        )
    return value


def identifiers(kind: str, values: object) -> list[str]:
    """Return `values` as a list if it is a collection (not a string) of valid ids of the given kind."""
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise InvalidArgument(f'{kind}s must be a list of ids, got {type(values).__name__} {values!r:.80}')
    ids = list(values)
    try:
        joined = '\n'.join(ids)
        if not ids or (joined.count('\n') == len(ids) - 1 and _IDS.fullmatch(joined)):  # no id holds a newline
            return ids
    except TypeError:
        pass  # not all strings: the check below names the first that is not
    return [identifier(kind, value) for value in ids]


def optional_identifier(kind: str, value: object) -> str | None:
    """Like `identifier`, but None passes through."""
    return None if value is None else identifier(kind, value)


def is_identifier(value: str) -> bool:
    """Whether `value` would pass `identifier`."""
    return bool(_ID.fullmatch(value))


def stream_id(kind: str, value: object) -> str:
    """Return `value` if it is a Redis stream id ('0', '1700000000000-0') to read after."""
    parts = _STREAM_ID.fullmatch(value) if isinstance(value, str) else None
    if parts is None or any(int(part) >= 2**64 for part in parts.groups() if part is not None):
        raise InvalidArgument(f'{kind} must be a stream id such as "0" or "1700000000000-0", got {value!r:.80}')
    return parts.group(0)


def wait_ms(kind: str, seconds: object) -> int | None:
    """`seconds` (None: no wait) as whole milliseconds, if it is a number of seconds in (0, MAX_WAIT_S]."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= MAX_WAIT_S:
        raise InvalidArgument(f'{kind} must be a number of seconds in (0, {MAX_WAIT_S}], got {seconds!r:.80}')
    return max(1, int(seconds * 1000))


def count(kind: str, value: object, maximum: int) -> int:
    """Return `value` if it is a whole number in 1..maximum."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidArgument(f'{kind} must be a whole number in 1..{maximum}, got {value!r:.80}')
    return value


def optional_token(kind: str, value: object) -> int | None:
    """Return `value` if it is None or a fencing token (a whole number of at least 1, below 1e14)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < TOKEN_LIMIT):
        raise InvalidArgument(f'{kind} must be a fencing token from activate() or restore() (or None), got '
                              f'{value!r:.80}')  # fmt: skip
    return value


def flag(kind: str, value: object) -> bool:
    """Return `value` if it is a bool (a string such as 'no' is not)."""
    if not isinstance(value, bool):
        raise InvalidArgument(f'{kind} must be True or False, got {value!r:.80}')
    return value
