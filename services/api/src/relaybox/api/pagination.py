"""Opaque keyset cursors: base64url of the last row's (created_at, id)."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime

from relaybox.api.errors import ApiError


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor points after; a 400 naming `cursor` if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = json.loads(raw)
        return datetime.fromisoformat(created_at), uuid.UUID(row_id)
    except (ValueError, TypeError, binascii.Error):
        raise ApiError(
            "cursor is malformed; pass back the nextCursor of a previous page", field="cursor"
        ) from None
