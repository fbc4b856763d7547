"""The decision trail's packing: what the scripts write, read back; what no entry may hold, kept out."""

from __future__ import annotations

from datetime import UTC, datetime

from lifecycle.pool.trail import Decision, Trail, entry, trail_of_document, unpack


def test_an_entry_never_holds_the_separators_and_stays_short() -> None:
    assert entry('aborted', 'idle', 'error: Redis refused; x,y') == 'aborted,idle,error: Redis refused_ x_y'
    assert len(entry('kept', 'idle', 'x' * 500).split(',')[2]) == 48


def test_a_packed_trail_reads_back_and_a_hand_edited_entry_is_left_out() -> None:
    # '²' passes str.isdigit() and not int(): a hand edit of it raised ValueError.
    packed = 'turn_end@api-1;1700000000000,kept,idle,busy,3;junk;²,kept,idle,,1;1700000000500,warned,idle,,1'
    decisions = (Decision(1_700_000_000_000, 'kept', 'idle', 'busy', 3), Decision(1_700_000_000_500, 'warned', 'idle'))
    assert unpack(packed) == Trail('turn_end@api-1', decisions)
    assert unpack('') == Trail('', ())
    assert unpack(None) is None


def test_a_trail_survives_its_trip_through_a_document() -> None:
    trail = Trail('touch@api-2', (Decision(1_700_000_000_000, 'aborted', 'idle', 'not_checkpointed', 2),))
    assert trail_of_document(trail.as_document()) == trail
    assert trail.as_document()['decisions'][0]['at'] == datetime.fromtimestamp(1_700_000_000, tz=UTC)
    assert trail_of_document(None) is None
    assert trail_of_document({'source': 's', 'decisions': [{'at': 'not a time'}]}) == Trail('s', ())
