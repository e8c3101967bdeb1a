"""The resume cursor: a checkpoint and the events sent after it (docs/messenger/stream.md).

`x` is a transaction id: every event the user may see whose transaction id is below `x` was
sent. `s` lists the events sent whose transaction id is `x` or more, as `[id, xid]` pairs (the
xid tells when a later checkpoint passes them). A cursor is opaque to clients:
`base64url(JSON {"v": 1, "x": …, "s": [[id, xid], …]})`.
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
    sent: tuple[tuple[int, int], ...] = ()

    def encode(self) -> str:
        body = json.dumps(
            {"v": VERSION, "x": self.x, "s": [list(pair) for pair in self.sent]},
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
        x, ids = body.get("x"), body.get("s")
        if not isinstance(x, int) or not _is_int(x):
            raise BadCursorError("not a cursor")
        if not isinstance(ids, list) or len(ids) > MAX_IDS:
            raise BadCursorError("not a cursor")
        pairs = []
        for pair in ids:
            if not isinstance(pair, list) or len(pair) != 2 or not all(_is_int(v) for v in pair):
                raise BadCursorError("not a cursor")
            if pair[1] < x:
                raise BadCursorError("not a cursor: an id below its checkpoint")
            pairs.append((pair[0], pair[1]))
        return cls(x=x, sent=tuple(pairs))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
