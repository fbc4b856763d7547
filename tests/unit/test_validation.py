from __future__ import annotations

import pytest

from lifecycle import InvalidArgument, InvalidTTL
from lifecycle.pool.sessions import check_ttl
from lifecycle.validate import identifier


@pytest.mark.parametrize('value', ['s', 'sess-1', '3f2b8c1e-9a4d-4c0b-8f7e-2d1a6b5c4e3f', 'a.b_c:d@e=f+g', 'x' * 128])
def test_valid_ids_pass_unchanged(value: str) -> None:
    assert identifier('session_id', value) == value


@pytest.mark.parametrize(
    'value',
    ['', ' ', 'has space', 'a|b', '{lc}', 'x' * 129, '-leading', 'new\nline', 'ünicode', 'a/b', None, 12, b'bytes'],
)
def test_invalid_ids_are_refused_naming_the_value(value: object) -> None:
    with pytest.raises(InvalidArgument, match='session_id') as info:
        identifier('session_id', value)
    assert repr(value)[:20] in str(info.value)


@pytest.mark.parametrize(('ttl', 'expected'), [(1, 1), (900, 900), (86_400, 86_400)])
def test_ttl_within_bounds_passes(ttl: int, expected: int) -> None:
    assert check_ttl(ttl, 86_400) == expected


@pytest.mark.parametrize('ttl', [0, -1, 86_401, 10**12, 1.5, 900.0, True, '900', None, float('nan')])
def test_ttl_outside_bounds_or_not_whole_seconds_is_refused(ttl: object) -> None:
    with pytest.raises(InvalidTTL, match='ttl_seconds'):
        check_ttl(ttl, 86_400)
