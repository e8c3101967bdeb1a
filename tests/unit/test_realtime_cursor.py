"""The stream position and the resume cursor that carries it."""

from __future__ import annotations

import base64
import json

import pytest

from relaybox.realtime.cursor import BadCursorError, Position


def raw(body: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()


def test_a_cursor_round_trips() -> None:
    position = Position((900, 3), frozenset({880, 899}), {7: 900, 9: 905})
    text = position.encode()
    assert Position.decode(text) == position
    assert "=" not in text
    # the documented form: base64url (unpadded) of compact JSON, pending and sent in order
    padded = text + "=" * (-len(text) % 4)
    assert base64.urlsafe_b64decode(padded) == (
        b'{"v":1,"x":900,"i":3,"p":[880,899],"s":[[7,900],[9,905]]}'
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "!!!",
        raw([1, 2]),
        raw({"v": 2, "x": 1, "s": []}),
        raw({"v": 1, "x": -1, "s": []}),
        raw({"v": 1, "x": True, "s": []}),
        raw({"v": 1, "x": 5, "s": [[1]]}),
        raw({"v": 1, "x": 5, "s": [["1", 6]]}),
        raw({"v": 1, "x": 5, "p": "no"}),
        raw({"v": 1, "x": 5, "p": [-3]}),
        raw({"v": 1, "x": 5, "s": "no"}),
    ],
)
def test_anything_else_is_a_bad_cursor(text: str) -> None:
    with pytest.raises(BadCursorError):
        Position.decode(text)


def test_an_event_is_covered_once_sent_or_passed() -> None:
    at = Position((100, 0))
    assert at.covered(5, 99)  # before the point: the client has it
    assert not at.covered(7, 100)
    at.record(7, 100)
    assert at.covered(7, 100)  # a duplicate publish
    at.record(8, 104)
    assert at.merge((103, 0), ())
    assert at.sent == {8: 104}  # 7 is behind the point now
    assert not at.merge((102, 0), ())  # never backwards
    assert Position.decode(at.encode()) == Position((103, 0), frozenset(), {8: 104})


def test_a_running_transaction_stays_owed_until_a_checkpoint_sees_it_end() -> None:
    """Transaction 50 was running at the checkpoint (pending): its events, ordered before the
    point, are still owed; the next checkpoint that no longer lists it settles them."""
    at = Position((40, 0))
    at.merge((60, 0), {50, 55})
    assert at.pending == {50, 55}
    assert not at.covered(1, 50)
    assert at.covered(2, 51)
    at.record(3, 50)  # 50 committed: its event came live
    assert at.covered(3, 50)
    at.merge((70, 0), {55, 65})  # 50 ended: done; 55 still runs; 65 is new
    assert at.pending == {55, 65}
    assert at.sent == {}
    at.merge((58, 0), ())  # an older checkpoint that saw 55 end: it is done too
    assert at.pending == {65}
    assert at.point == (70, 0)


def test_a_long_transaction_keeps_the_cursor_short() -> None:
    """However many events flow while one transaction runs, the cursor holds only what came
    since the last checkpoint, and the running transaction."""
    at = Position((10, 0))
    for n in range(1000):
        xid = 20 + n
        at.record(n, xid)
        at.merge((xid + 1, 0), {15})  # 15 runs all along
    assert at.pending == {15}
    assert len(at.sent) == 0
    assert len(at.encode()) < 80


def test_a_point_inside_one_transaction_splits_its_events() -> None:
    at = Position((50, 0))
    at.merge((60, 10), ())
    assert at.covered(9, 60)
    assert not at.covered(10, 60)
    assert not at.covered(11, 60)
