"""A Meta-like provider's timestamps: ISO 8601 or Unix seconds, read as aware UTC datetimes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

_UNIX_SECONDS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
_TIMESTAMP_FORMS = "timestamp must be an ISO 8601 datetime or Unix seconds"


def parse_provider_timestamp(value: Any) -> datetime:
    """A provider timestamp as an aware UTC datetime.

    Accepted: ISO 8601 strings (the mock sends `2025-01-02T03:04:05.678Z`; one without an offset
    is taken as UTC, as the mock does) and Unix seconds (a JSON number, or a string of digits as
    Meta sends them). Anything else (milliseconds, a boolean, ...) raises ValueError with a
    message fit for an API answer.
    """
    if isinstance(value, str) and _UNIX_SECONDS.fullmatch(value):
        value = float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError("timestamp is out of range (Unix seconds are expected)") from None
    if not isinstance(value, str):
        raise ValueError(_TIMESTAMP_FORMS)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(_TIMESTAMP_FORMS) from None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
