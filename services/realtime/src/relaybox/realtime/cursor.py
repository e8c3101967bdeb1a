"""Where a client is in its stream, and the resume cursor that writes it down
(docs/messenger/stream.md explains why this never skips a late commit).

Events are ordered by `(xid, id)`: their transaction's id, then their own. A position says which
events the client has:
- every event ordered before `point` — except those of the transactions in `pending`, which were
  still running when the position was taken (they may commit later, with events ordered before
  it);
- and every event listed in `sent` (id → xid): events sent that the first rule does not cover
  yet (delivered live ahead of the point, or written by a pending transaction).

Checkpoints move `point` forward and empty `pending` and `sent`: both stay as short as the
number of transactions running at once and the events of one checkpoint interval, however long
any transaction runs. A cursor is opaque to clients:
`base64url(JSON {"v": 1, "x": …, "i": …, "p": [xid, …], "s": [[id, xid], …]})`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

VERSION = 1
_encode = msgspec.json.Encoder().encode
MAX_ITEMS = 100_000


class BadCursorError(ValueError):
    """Not a cursor this service wrote."""


@dataclass
class Position:
    point: tuple[int, int] = (0, 0)
    pending: frozenset[int] = frozenset()
    sent: dict[int, int] = field(default_factory=dict)

    def covered(self, event_id: int, xid: int) -> bool:
        """True if the client has this event."""
        if event_id in self.sent:
            return True
        return (xid, event_id) < self.point and xid not in self.pending

    def record(self, event_id: int, xid: int) -> None:
        self.sent[event_id] = xid

    def merge(self, point: tuple[int, int], pending: Iterable[int]) -> bool:
        """Add what a checkpoint proves: every event before `point` was sent except those of
        the transactions in `pending`. Returns True if anything was forgotten or moved."""
        theirs = frozenset(pending)
        before = (self.point, self.pending, len(self.sent))
        if point > self.point:
            # below our point only our pending transactions were missing; above it theirs
            self.pending = frozenset(x for x in theirs if x in self.pending or x >= self.point[0])
            self.point = point
        else:
            # our pending transactions that finished before their point are done
            self.pending = frozenset(x for x in self.pending if x >= point[0] or x in theirs)
        self.sent = {
            i: x
            for i, x in self.sent.items()
            if not ((x, i) < self.point and x not in self.pending)
        }
        return before != (self.point, self.pending, len(self.sent))

    # -- the cursor -------------------------------------------------------------------------

    def encode(self) -> str:
        body = _encode(
            {
                "v": VERSION,
                "x": self.point[0],
                "i": self.point[1],
                "p": sorted(self.pending),
                "s": [[i, x] for i, x in sorted(self.sent.items())],
            }
        )  # compact JSON, as json.dumps with separators=(",", ":") writes it, ~5x faster
        return base64.urlsafe_b64encode(body).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> Position:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            body = json.loads(raw)
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise BadCursorError("not a cursor") from None
        if not isinstance(body, dict) or body.get("v") != VERSION:
            raise BadCursorError("not a cursor of this version")
        x, i = body.get("x"), body.get("i", 0)
        pending, sent = body.get("p", []), body.get("s", [])
        if not (isinstance(x, int) and isinstance(i, int) and _whole(x) and _whole(i)):
            raise BadCursorError("not a cursor")
        if not isinstance(pending, list) or not all(_whole(p) for p in pending):
            raise BadCursorError("not a cursor")
        if not isinstance(sent, list) or len(pending) + len(sent) > MAX_ITEMS:
            raise BadCursorError("not a cursor")
        pairs: dict[int, int] = {}
        for pair in sent:
            if not isinstance(pair, list) or len(pair) != 2 or not all(_whole(v) for v in pair):
                raise BadCursorError("not a cursor")
            pairs[pair[0]] = pair[1]
        return cls((x, i), frozenset(pending), pairs)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
