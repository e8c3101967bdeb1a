"""Paging lists: opaque keyset cursors, one codec for every list (base64url of the last row's
position: its sort key and id, e.g. `(created_at, id)`, or a single number such as a recipient
id), and the newest-first page every creation-ordered list uses."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from relaybox.api.errors import ApiError

Position = datetime | uuid.UUID | int


def encode_cursor(*position: Position) -> str:
    """The cursor of the page that follows the row at `position`."""
    values = [v.isoformat() if isinstance(v, datetime) else v for v in position]
    raw = json.dumps(
        [str(v) if isinstance(v, uuid.UUID) else v for v in values], separators=(",", ":")
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _malformed() -> ApiError:
    return ApiError(
        "cursor is malformed; pass back the nextCursor of a previous page", field="cursor"
    )


def _decoded(cursor: str, size: int) -> list[object]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (ValueError, binascii.Error):
        raise _malformed() from None
    if not isinstance(values, list) or len(values) != size:
        raise _malformed()
    return values


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a cursor points after; a 400 naming `cursor` if it is not ours."""
    created_at, row_id = _decoded(cursor, 2)
    try:
        return datetime.fromisoformat(str(created_at)), uuid.UUID(str(row_id))
    except ValueError:
        raise _malformed() from None


def decode_position(cursor: str) -> int:
    """The row position (an id, a row number) a cursor points after; a 400 if it is not ours."""
    (position,) = _decoded(cursor, 1)
    if isinstance(position, int) and not isinstance(position, bool):
        return position
    raise _malformed()


async def newest_first(
    session: AsyncSession,
    stmt: Select[Any],
    created_at: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[uuid.UUID],
    *,
    page: int,
    limit: int,
    cursor: str | None,
) -> tuple[list[Any], str | None]:
    """One page of `stmt`'s rows, newest first by (created_at, id): those after `cursor` when
    given (keyset: stable while new rows arrive), else page `page`; and the next page's cursor
    (None on the last page)."""
    stmt = stmt.order_by(created_at.desc(), row_id.desc())
    if cursor:
        stmt = stmt.where(tuple_(created_at, row_id) < tuple_(*decode_cursor(cursor)))
    else:
        stmt = stmt.offset((page - 1) * limit)
    rows = list((await session.scalars(stmt.limit(limit + 1))).all())
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor(getattr(last, created_at.key), getattr(last, row_id.key))
