"""The resume cursor: a checkpoint and the events sent after it (docs/messenger/stream.md).

Events are ordered by `(xid, id)`: their transaction's id, then their own. The checkpoint
`(x, i)` is a position in that order: every event the user may see that is ordered before it was
sent. `s` lists the events sent that are ordered at or after it, as `[id, xid]` pairs (the xid
tells when a later checkpoint passes them). A cursor is opaque to clients:
`base64url(JSON {"v": 1, "x": …, "i": …, "s": [[id, xid], …]})`.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

VERSION = 1
MAX_IDS = 100_000


class BadCursorError(ValueError):
    """Not a cursor this service wrote."""


@dataclass(frozen=True)
class Cursor:
    x: int
    i: int = 0
    sent: tuple[tuple[int, int], ...] = ()

    @property
    def position(self) -> tuple[int, int]:
        return (self.x, self.i)

    def encode(self) -> str:
        body = json.dumps(
            {"v": VERSION, "x": self.x, "i": self.i, "s": [list(pair) for pair in self.sent]},
            separators=(",", ":"),
        )
        return base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            body = json.loads(raw)
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise BadCursorError("not a cursor") from None
        if not isinstance(body, dict) or body.get("v") != VERSION:
            raise BadCursorError("not a cursor of this version")
        x, i, ids = body.get("x"), body.get("i", 0), body.get("s")
        if not isinstance(x, int) or not _is_int(x) or not isinstance(i, int) or not _is_int(i):
            raise BadCursorError("not a cursor")
        if not isinstance(ids, list) or len(ids) > MAX_IDS:
            raise BadCursorError("not a cursor")
        pairs = []
        for pair in ids:
            if not isinstance(pair, list) or len(pair) != 2 or not all(_is_int(v) for v in pair):
                raise BadCursorError("not a cursor")
            if (pair[1], pair[0]) < (x, i):
                raise BadCursorError("not a cursor: an event before its checkpoint")
            pairs.append((pair[0], pair[1]))
        return cls(x=x, i=i, sent=tuple(pairs))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
