"""Email service: the SQL behind POST /send and the delivery log."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import Select, and_, func, insert, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.emails.schemas import (
    Accepted,
    EmailDetail,
    EmailLogItem,
    EmailLogPage,
    PageMeta,
    SendEmailRequest,
    Stats,
    TodayStats,
)
from relaybox.api.errors import ApiError, NotFoundError
from relaybox.api.idempotency import Idempotency, StoredResponse
from relaybox.api.pagination import decode_cursor, encode_cursor
from relaybox.common.db.models import Email
from relaybox.common.messaging.topology import EMAIL_SEND
from relaybox.common.outbox import enqueue, trace_headers

IDEMPOTENCY_SCOPE = "email.send"


async def accept_email(
    session: AsyncSession,
    *,
    client_id: str,
    request: SendEmailRequest,
    default_from: str,
    idempotency: Idempotency | None,
    correlation_id: str | None,
) -> StoredResponse:
    """Write the PENDING email and its outbox row in one transaction (or replay a stored answer)."""
    async with session.begin():
        if idempotency is not None and (stored := await idempotency.replay(session)):
            return stored
        email_id = uuid.uuid4()
        created_at = await session.scalar(
            insert(Email)
            .values(
                id=email_id,
                client_id=client_id,
                to_address=request.to,
                from_address=request.from_ or default_from,
                subject=request.subject,
                text_body=request.text,
                html_body=request.html,
            )
            .returning(Email.created_at)
        )
        await enqueue(
            session,
            routing_key=EMAIL_SEND,
            payload={"id": str(email_id)},
            headers=trace_headers(correlation_id),
        )
        assert created_at is not None
        accepted = Accepted(id=email_id, status="PENDING", created_at=created_at)
        response = StoredResponse(202, _to_json(accepted))
        if idempotency is not None:
            await idempotency.store(session, response)
    return response


def _to_json(accepted: Accepted) -> dict[str, Any]:
    """Encoded as every other response is (`createdAt` reads the same here and in the log)."""
    body: dict[str, Any] = msgspec.to_builtins(accepted)
    return body


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


def _filtered(query: LogQuery) -> Select[Any]:
    stmt = select(Email)
    if query.status:
        stmt = stmt.where(Email.status == query.status)
    if query.since:
        stmt = stmt.where(Email.created_at >= query.since)
    if query.until:
        stmt = stmt.where(Email.created_at < query.until)
    return stmt


def _item(row: Email) -> EmailLogItem:
    return EmailLogItem(
        id=row.id,
        to=row.to_address,
        from_=row.from_address,
        subject=row.subject,
        status=row.status,  # type: ignore[arg-type]
        attempts=row.attempts,
        created_at=row.created_at,
        sent_at=row.sent_at,
        failed_at=row.failed_at,
        error=row.last_error,
    )


async def email_log(
    session: AsyncSession, query: LogQuery, *, zone: ZoneInfo, now: datetime
) -> EmailLogPage:
    """Newest first; keyset paging when a cursor is given, else page/limit."""
    stmt = _filtered(query).order_by(Email.created_at.desc(), Email.id.desc())
    if query.cursor:
        after_ts, after_id = decode_cursor(query.cursor)
        stmt = stmt.where(tuple_(Email.created_at, Email.id) < tuple_(after_ts, after_id))
    else:
        stmt = stmt.offset((query.page - 1) * query.limit)
    rows = list((await session.scalars(stmt.limit(query.limit + 1))).all())
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    total = await session.scalar(select(func.count()).select_from(_filtered(query).subquery()))
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return EmailLogPage(
        data=[_item(r) for r in rows],
        meta=PageMeta(
            page=query.page, limit=query.limit, total=total or 0, next_cursor=next_cursor
        ),
        stats=Stats(today=await today_stats(session, zone=zone, now=now)),
    )


async def today_stats(session: AsyncSession, *, zone: ZoneInfo, now: datetime) -> TodayStats:
    """Counts of the emails created today (in `zone`) by outcome."""
    day, start, end = today_bounds(now, zone)
    pending = or_(Email.status == "PENDING", Email.status == "SENDING")
    row = (
        await session.execute(
            select(
                func.count(),
                func.count().filter(Email.status == "SENT"),
                func.count().filter(Email.status == "FAILED"),
                func.count().filter(pending),
            ).where(and_(Email.created_at >= start, Email.created_at < end))
        )
    ).one()
    return TodayStats(
        total=row[0],
        sent=row[1],
        failed=row[2],
        pending=row[3],
        date=day.isoformat(),
        timezone=zone.key,
    )


async def get_email(session: AsyncSession, email_id: uuid.UUID) -> EmailDetail:
    row = await session.get(Email, email_id)
    if row is None:
        raise NotFoundError(f"no email with id {email_id}")
    item = _item(row)
    return EmailDetail(
        **{f: getattr(item, f) for f in item.__struct_fields__},
        text=row.text_body,
        html=row.html_body,
        provider_message_id=row.provider_message_id,
        updated_at=row.updated_at,
    )
