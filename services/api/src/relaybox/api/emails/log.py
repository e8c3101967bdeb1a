"""The delivery log's read model: the caller's tenant's emails, newest first, with today's
totals, and one email."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client, owned_by
from relaybox.api.emails.query import LogQuery, today_bounds
from relaybox.api.emails.schemas import (
    EmailDetail,
    EmailLogItem,
    EmailLogPage,
    PageMeta,
    Stats,
    TodayStats,
)
from relaybox.api.errors import NotFoundError
from relaybox.api.pagination import newest_first
from relaybox.common.db.models import Email


def _filtered(query: LogQuery, client: Client) -> Select[Any]:
    stmt = select(Email).where(owned_by(Email.tenant_id, client))
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
    session: AsyncSession, client: Client, query: LogQuery, *, zone: ZoneInfo, now: datetime
) -> EmailLogPage:
    """The caller's tenant's emails (every tenant's for an admin), newest first; keyset paging
    when a cursor is given, else page/limit."""
    rows, next_cursor = await newest_first(
        session,
        _filtered(query, client),
        Email.created_at,
        Email.id,
        page=query.page,
        limit=query.limit,
        cursor=query.cursor,
    )
    total = await session.scalar(
        select(func.count()).select_from(_filtered(query, client).subquery())
    )
    return EmailLogPage(
        data=[_item(r) for r in rows],
        meta=PageMeta(
            page=query.page, limit=query.limit, total=total or 0, next_cursor=next_cursor
        ),
        stats=Stats(today=await today_stats(session, client, zone=zone, now=now)),
    )


async def today_stats(
    session: AsyncSession, client: Client, *, zone: ZoneInfo, now: datetime
) -> TodayStats:
    """Counts of the caller's tenant's emails (every tenant's for an admin) created today (in
    `zone`), by outcome."""
    day, start, end = today_bounds(now, zone)
    pending = or_(Email.status == "PENDING", Email.status == "SENDING")
    row = (
        await session.execute(
            select(
                func.count(),
                func.count().filter(Email.status == "SENT"),
                func.count().filter(Email.status == "FAILED"),
                func.count().filter(pending),
            ).where(
                and_(
                    Email.created_at >= start,
                    Email.created_at < end,
                    owned_by(Email.tenant_id, client),
                )
            )
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


async def get_email(session: AsyncSession, client: Client, email_id: uuid.UUID) -> EmailDetail:
    """One email of the caller's tenant; another tenant's is not found."""
    row = await session.scalar(
        select(Email).where(Email.id == email_id, owned_by(Email.tenant_id, client))
    )
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
