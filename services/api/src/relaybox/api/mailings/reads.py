"""Reading mailings: one mailing's detail and progress, the list, its recipients and its
invalid rows, each limited to the caller's tenant.

A recipient's delivery state is derived from its `emails` row (`DELIVERY_STATUS`); counts,
filters and entries all use that one definition.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    func,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client, owned_by
from relaybox.api.errors import NotFoundError
from relaybox.api.mailings.schemas import (
    CursorMeta,
    MailingCounts,
    MailingDetail,
    MailingEntry,
    MailingEntryPage,
    MailingErrorItem,
    MailingErrorPage,
    MailingLinks,
    MailingPage,
    MailingPageMeta,
)
from relaybox.api.pagination import decode_position, encode_cursor, newest_first
from relaybox.common.db.models import Email, Mailing, MailingError, MailingRecipient
from relaybox.common.delivery import IN_FLIGHT
from relaybox.common.mailings.rules import MailingStatus

FINISHED = (MailingStatus.COMPLETED, MailingStatus.CANCELLED, MailingStatus.FAILED)

_r = MailingRecipient
_e = Email
_live = _r.status != "CANCELLED"
DELIVERY_FILTERS: dict[str, ColumnElement[bool]] = {
    "CANCELLED": _r.status == "CANCELLED",
    "SENT": and_(_live, _e.status == "SENT"),
    "FAILED": and_(_live, _e.status == "FAILED"),
    "PENDING": and_(_live, or_(_e.status.is_(None), _e.status.in_(IN_FLIGHT))),
}
DELIVERY_ORDER = ("PENDING", "SENT", "FAILED", "CANCELLED")  # the fields of `RecipientCounts`
DELIVERY_STATUS = case(
    (DELIVERY_FILTERS["CANCELLED"], "CANCELLED"),
    (DELIVERY_FILTERS["SENT"], "SENT"),
    (DELIVERY_FILTERS["FAILED"], "FAILED"),
    else_="PENDING",
)


@dataclass(frozen=True)
class RecipientCounts:
    """Where a mailing's recipients stand."""

    pending: int = 0
    sent: int = 0
    failed: int = 0
    cancelled: int = 0


@dataclass(frozen=True)
class View:
    """What a mailing's detail needs besides its rows: the clock and the provider's pace."""

    now: datetime
    rate_per_second: float


def _links(mailing_id: uuid.UUID) -> MailingLinks:
    base = f"/mailings/{mailing_id}"
    return MailingLinks(self_=base, entries=f"{base}/entries", errors=f"{base}/errors")


def mailing_detail(row: Mailing, delivery: RecipientCounts, view: View) -> MailingDetail:
    done = delivery.sent + delivery.failed + delivery.cancelled
    if row.valid_count > 0:
        progress: float | None = min(1.0, round(done / row.valid_count, 4))
    else:
        progress = 1.0 if row.status in FINISHED else None
    eta_seconds = (
        math.ceil(delivery.pending / view.rate_per_second)
        if row.status == MailingStatus.RUNNING
        else None
    )
    return MailingDetail(
        id=row.id,
        status=row.status,  # type: ignore[arg-type]
        subject=row.subject,
        file_name=row.file_name,
        file_bytes=row.file_bytes,
        file_sha256=row.file_sha256,
        counts=MailingCounts(
            rows=row.rows_total,
            valid=row.valid_count,
            invalid=row.invalid_count,
            duplicates=row.duplicate_count,
            pending=delivery.pending,
            sent=delivery.sent,
            failed=delivery.failed,
            cancelled=delivery.cancelled,
        ),
        progress=progress,
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        eta=None if eta_seconds is None else view.now + timedelta(seconds=eta_seconds),
        eta_seconds=eta_seconds,
        links=_links(row.id),
    )


async def recipient_counts(
    session: AsyncSession, mailing_ids: list[uuid.UUID]
) -> dict[uuid.UUID, RecipientCounts]:
    """Recipients by delivery state for each mailing: one aggregate over recipients ⟕ emails."""
    if not mailing_ids:
        return {}
    stmt = (
        select(
            _r.mailing_id,
            *(func.count().filter(DELIVERY_FILTERS[s]) for s in DELIVERY_ORDER),
        )
        .select_from(_r)
        .outerjoin(_e, _e.id == _r.email_id)
        .where(_r.mailing_id.in_(mailing_ids))
        .group_by(_r.mailing_id)
    )
    result = await session.execute(stmt)
    return {
        r[0]: RecipientCounts(pending=r[1], sent=r[2], failed=r[3], cancelled=r[4]) for r in result
    }


async def detail_of(session: AsyncSession, row: Mailing, view: View) -> MailingDetail:
    found = await recipient_counts(session, [row.id])
    return mailing_detail(row, found.get(row.id, RecipientCounts()), view)


async def owned_mailing(session: AsyncSession, client: Client, mailing_id: uuid.UUID) -> Mailing:
    """The caller's tenant's mailing (any, for an admin); another tenant's is as unknown as a
    missing one (404)."""
    row = await session.scalar(
        select(Mailing).where(Mailing.id == mailing_id, owned_by(Mailing.tenant_id, client))
    )
    if row is None:
        raise NotFoundError.of("mailing", mailing_id)
    return row


async def get_mailing(
    session: AsyncSession, client: Client, mailing_id: uuid.UUID, view: View
) -> MailingDetail:
    return await detail_of(session, await owned_mailing(session, client, mailing_id), view)


@dataclass(frozen=True)
class MailingQuery:
    page: int
    limit: int
    status: str | None
    cursor: str | None


def _listed(client: Client, query: MailingQuery) -> Select[Any]:
    stmt = select(Mailing).where(owned_by(Mailing.tenant_id, client))
    if query.status:
        stmt = stmt.where(Mailing.status == query.status)
    return stmt


async def list_mailings(
    session: AsyncSession, client: Client, query: MailingQuery, view: View
) -> MailingPage:
    """The client's mailings, newest first: keyset paging with a cursor, else page/limit."""
    rows, next_cursor = await newest_first(
        session,
        _listed(client, query),
        Mailing.created_at,
        Mailing.id,
        page=query.page,
        limit=query.limit,
        cursor=query.cursor,
    )
    total = await session.scalar(
        select(func.count()).select_from(_listed(client, query).subquery())
    )
    found = await recipient_counts(session, [r.id for r in rows])
    return MailingPage(
        data=[mailing_detail(r, found.get(r.id, RecipientCounts()), view) for r in rows],
        meta=MailingPageMeta(
            page=query.page,
            limit=query.limit,
            total=total or 0,
            next_cursor=next_cursor,
        ),
    )


async def list_entries(
    session: AsyncSession,
    client: Client,
    mailing_id: uuid.UUID,
    *,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> MailingEntryPage:
    """Recipients in file order (keyset on the recipient id) with their delivery state."""
    await owned_mailing(session, client, mailing_id)
    stmt = (
        select(
            _r.id,
            _r.row_number,
            _r.email,
            DELIVERY_STATUS,
            _e.sent_at,
            _e.failed_at,
            _e.last_error,
        )
        .select_from(_r)
        .outerjoin(_e, _e.id == _r.email_id)
        .where(_r.mailing_id == mailing_id)
        .order_by(_r.id)
        .limit(limit + 1)
    )
    if status:
        stmt = stmt.where(DELIVERY_FILTERS[status])
    if cursor:
        stmt = stmt.where(_r.id > decode_position(cursor))
    rows = (await session.execute(stmt)).all()
    page = rows[:limit]
    return MailingEntryPage(
        data=[
            MailingEntry(
                row_number=r.row_number,
                email=r.email,
                status=r[3],
                sent_at=r.sent_at,
                failed_at=r.failed_at,
                error=r.last_error,
            )
            for r in page
        ],
        meta=CursorMeta(
            limit=limit, next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None
        ),
    )


async def list_errors(
    session: AsyncSession, client: Client, mailing_id: uuid.UUID, *, cursor: str | None, limit: int
) -> MailingErrorPage:
    """The file's invalid rows in file order (keyset on the row number)."""
    await owned_mailing(session, client, mailing_id)
    stmt = (
        select(MailingError)
        .where(MailingError.mailing_id == mailing_id)
        .order_by(MailingError.row_number)
        .limit(limit + 1)
    )
    if cursor:
        stmt = stmt.where(MailingError.row_number > decode_position(cursor))
    rows = list((await session.scalars(stmt)).all())
    page = rows[:limit]
    return MailingErrorPage(
        data=[
            MailingErrorItem(row_number=r.row_number, value=r.raw_value, reason=r.reason)
            for r in page
        ],
        meta=CursorMeta(
            limit=limit,
            next_cursor=encode_cursor(page[-1].row_number) if len(rows) > limit else None,
        ),
    )
