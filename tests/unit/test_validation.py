from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifecycle import InvalidArgument, InvalidTTL
from lifecycle.pool.sessions import check_ttl
from lifecycle.validate import identifier, identifiers


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


@given(st.lists(st.one_of(st.text(max_size=6), st.sampled_from(['a', 'b-1', 'x' * 128, 'x' * 129, 'a\nb', 'a\n', '\n']),
                          st.integers(), st.none()), max_size=6))  # fmt: skip
def test_many_ids_are_judged_exactly_as_one_at_a_time(values: list[object]) -> None:
    """`identifiers` checks a batch in one match: it takes and refuses exactly what `identifier` does, one by one."""
    try:
        expected: object = [identifier('session_id', value) for value in values]
    except InvalidArgument as exc:
        expected = str(exc)
    try:
        got: object = identifiers('session_id', values)
    except InvalidArgument as exc:
        got = str(exc)
    assert got == expected
