"""Checks on identifiers that callers hand to lifecycle, each failing with the bad value named."""

from __future__ import annotations

import re

from lifecycle.errors import InvalidArgument

# Ids end up inside Redis keys, packed records ('|'-separated) and MongoDB _ids: no separators,
# no braces (they would break the hash tag), no whitespace.
_ID = re.compile(r'[A-Za-z0-9][A-Za-z0-9._:@=+-]{0,127}')
MAX_ID_LENGTH = 128


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


def optional_identifier(kind: str, value: object) -> str | None:
    """Like `identifier`, but None passes through."""
    return None if value is None else identifier(kind, value)


def is_identifier(value: str) -> bool:
    """Whether `value` would pass `identifier`."""
    return bool(_ID.fullmatch(value))
