"""The resume cursor and the stream position it carries."""

from __future__ import annotations

import base64
import json
from unittest.mock import MagicMock

import pytest

from relaybox.common.auth import Caller
from relaybox.realtime.connection import Connection
from relaybox.realtime.cursor import BadCursorError, Cursor


def raw(body: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()


def test_a_cursor_round_trips() -> None:
    cursor = Cursor(900, 3, ((7, 900), (9, 901)))
    assert Cursor.decode(cursor.encode()) == cursor
    assert "=" not in cursor.encode()


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
        raw({"v": 1, "x": 5, "i": 2, "s": [[1, 5]]}),  # before its own checkpoint
        raw({"v": 1, "x": 5, "s": "no"}),
    ],
)
def test_anything_else_is_a_bad_cursor(text: str) -> None:
    with pytest.raises(BadCursorError):
        Cursor.decode(text)


def connection() -> Connection:
    return Connection(MagicMock(), Caller("alice", "acme", frozenset()), None, send_buffer=4)


def test_an_event_is_sent_once_and_a_checkpoint_forgets_what_it_passed() -> None:
    conn = connection()
    conn.replaying = False
    conn.start_at(Cursor(100))
    assert conn.frame("read", 5, 99, {}) is None  # before the position: the client has it
    first = conn.frame("read", 7, 100, {})
    assert first is not None
    assert conn.frame("read", 7, 100, {}) is None  # a duplicate publish
    conn.frame("read", 8, 104, {})
    assert conn.advance((103, 0))
    assert conn.sent == {8: 104}
    assert not conn.advance((102, 0))  # never backwards
    assert Cursor.decode(conn.cursor()) == Cursor(103, 0, ((8, 104),))


def test_a_position_inside_one_transaction_splits_its_events() -> None:
    conn = connection()
    conn.start_at(Cursor(50))
    conn.advance((60, 10))
    assert conn.covered(9, 60)
    assert not conn.covered(10, 60)
    assert not conn.covered(11, 60)
