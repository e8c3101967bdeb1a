"""The delivery log's query: its validated filters, `from`/`to` bounds and today's bounds in
the configured timezone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from relaybox.api.errors import ApiError


@dataclass(frozen=True)
class LogQuery:
    """Validated query of the delivery log."""

    page: int
    limit: int
    status: str | None
    since: datetime | None
    until: datetime | None
    cursor: str | None


def parse_bound(value: str | None, field: str, zone: ZoneInfo, *, end: bool) -> datetime | None:
    """A `from`/`to` filter: a date (whole day in the log's timezone) or an ISO datetime."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime.combine(day, time.min, zone)
            return start + timedelta(days=1) if end else start
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(
            f"'{field}' must be a date (YYYY-MM-DD) or an ISO 8601 datetime", field=field
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)


def today_bounds(now: datetime, zone: ZoneInfo) -> tuple[date, datetime, datetime]:
    """Today's date in `zone` and its [start, end) instants."""
    local_day = now.astimezone(zone).date()
    start = datetime.combine(local_day, time.min, zone)
    return local_day, start, datetime.combine(local_day + timedelta(days=1), time.min, zone)
