"""Mailing service: the SQL behind the upload, the progress views and the controls.

A recipient's delivery state is derived from its `emails` row (`DELIVERY_STATUS`); counts,
filters and entries all use that one definition.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Select,
    and_,
    case,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client, owned_by
from relaybox.api.errors import ApiError, ConflictError, NotFoundError
from relaybox.api.idempotency import Idempotency, StoredResponse, lock_key
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
from relaybox.api.mailings.upload import CheckedUpload, chunks
from relaybox.api.pagination import decode_cursor, encode_cursor
from relaybox.api.settings import MailingSettings
from relaybox.common.db.models import Email, Mailing, MailingChunk, MailingError, MailingRecipient
from relaybox.common.delivery import IN_FLIGHT
from relaybox.common.mailings.rules import UNPARSED_SQL
from relaybox.common.messaging.topology import MAILING_PARSE
from relaybox.common.outbox import enqueue, trace_headers

IDEMPOTENCY_SCOPE = "mailing.create"
REUPLOAD_LOCK_SCOPE = "mailing.file"  # serialises uploads of one file by one client
CANCELLED_ERROR = "mailing cancelled"
FINISHED = ("COMPLETED", "CANCELLED", "FAILED")

_r = MailingRecipient
_e = Email
_live = _r.status != "CANCELLED"
DELIVERY_FILTERS: dict[str, ColumnElement[bool]] = {
    "CANCELLED": _r.status == "CANCELLED",
    "SENT": and_(_live, _e.status == "SENT"),
    "FAILED": and_(_live, _e.status == "FAILED"),
    "PENDING": and_(_live, or_(_e.status.is_(None), _e.status.in_(IN_FLIGHT))),
}
DELIVERY_ORDER = ("PENDING", "SENT", "FAILED", "CANCELLED")  # the fields of `Delivery`
DELIVERY_STATUS = case(
    (DELIVERY_FILTERS["CANCELLED"], "CANCELLED"),
    (DELIVERY_FILTERS["SENT"], "SENT"),
    (DELIVERY_FILTERS["FAILED"], "FAILED"),
    else_="PENDING",
)


@dataclass(frozen=True)
class Delivery:
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


def mailing_detail(row: Mailing, delivery: Delivery, view: View) -> MailingDetail:
    done = delivery.sent + delivery.failed + delivery.cancelled
    if row.valid_count > 0:
        progress: float | None = min(1.0, round(done / row.valid_count, 4))
    else:
        progress = 1.0 if row.status in FINISHED else None
    eta_seconds = (
        math.ceil(delivery.pending / view.rate_per_second) if row.status == "RUNNING" else None
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


def _to_json(detail: MailingDetail) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.to_builtins(detail)
    return body


async def deliveries(
    session: AsyncSession, mailing_ids: list[uuid.UUID]
) -> dict[uuid.UUID, Delivery]:
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
    return {r[0]: Delivery(pending=r[1], sent=r[2], failed=r[3], cancelled=r[4]) for r in result}


async def _detail(session: AsyncSession, row: Mailing, view: View) -> MailingDetail:
    found = await deliveries(session, [row.id])
    return mailing_detail(row, found.get(row.id, Delivery()), view)


# --- the upload ------------------------------------------------------------------------------


async def create_mailing(
    session: AsyncSession,
    *,
    client: Client,
    upload: CheckedUpload,
    settings: MailingSettings,
    idempotency: Idempotency | None,
    correlation_id: str | None,
    view: View,
) -> StoredResponse:
    """Store the mailing (PARSING), its file in chunks and its `mailing.parse` outbox row in one
    transaction: 202. The same file with the same subject and body from the same tenant within
    `reupload_window_s` answers that mailing as it is now (200) and writes nothing.

    The re-upload check runs under a transaction-level advisory lock on (tenant, sha256), so two
    concurrent uploads of one file make one mailing: the second waits and then finds the first.
    """
    async with session.begin():
        if idempotency is not None and (stored := await idempotency.replay(session)):
            return stored
        await session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": lock_key(client.tenant, REUPLOAD_LOCK_SCOPE, upload.sha256)},
        )
        existing = await _recent_upload(session, client, upload, settings.reupload_window_s)
        if existing is not None:
            response = StoredResponse(200, _to_json(await _detail(session, existing, view)))
        else:
            mailing = await _store(session, client, upload, settings.chunk_bytes)
            await enqueue(
                session,
                routing_key=MAILING_PARSE,
                payload={"id": str(mailing.id)},
                headers=trace_headers(correlation_id),
            )
            response = StoredResponse(202, _to_json(mailing_detail(mailing, Delivery(), view)))
        if idempotency is not None:
            await idempotency.store(session, response)
    return response


async def _recent_upload(
    session: AsyncSession, client: Client, upload: CheckedUpload, window_s: int
) -> Mailing | None:
    """The tenant's newest mailing of this file, subject and body within the window (one that
    was cancelled or failed does not count: uploading again is how to start over)."""
    if window_s <= 0:
        return None
    return await session.scalar(
        select(Mailing)
        .where(
            Mailing.tenant_id == client.tenant,
            Mailing.file_sha256 == upload.sha256,
            Mailing.created_at > func.now() - timedelta(seconds=window_s),
            Mailing.subject == upload.subject,
            Mailing.body_template == upload.body,
            Mailing.status.not_in(("CANCELLED", "FAILED")),
        )
        .order_by(Mailing.created_at.desc())
        .limit(1)
    )


async def _store(
    session: AsyncSession, client: Client, upload: CheckedUpload, chunk_bytes: int
) -> Mailing:
    """The mailing row, then the file as `mailing_chunks` rows 0..n, one chunk in memory."""
    mailing: Mailing | None = await session.scalar(
        insert(Mailing)
        .values(
            id=uuid.uuid4(),
            tenant_id=client.tenant,
            status="PARSING",
            subject=upload.subject,
            body_template=upload.body,
            file_name=upload.file_name,
            file_sha256=upload.sha256,
            file_bytes=upload.size,
        )
        .returning(Mailing)
    )
    assert mailing is not None
    seq = 0
    async for chunk in chunks(upload.file, chunk_bytes):
        await session.execute(
            insert(MailingChunk).values(mailing_id=mailing.id, seq=seq, data=chunk)
        )
        seq += 1
    return mailing


# --- reading ---------------------------------------------------------------------------------


def _not_found(mailing_id: uuid.UUID) -> NotFoundError:
    return NotFoundError(f"no mailing with id {mailing_id}")


async def _owned(session: AsyncSession, client: Client, mailing_id: uuid.UUID) -> Mailing:
    """The caller's tenant's mailing (any, for an admin); another tenant's is as unknown as a
    missing one (404)."""
    row = await session.scalar(
        select(Mailing).where(Mailing.id == mailing_id, owned_by(Mailing.tenant_id, client))
    )
    if row is None:
        raise _not_found(mailing_id)
    return row


async def get_mailing(
    session: AsyncSession, client: Client, mailing_id: uuid.UUID, view: View
) -> MailingDetail:
    return await _detail(session, await _owned(session, client, mailing_id), view)


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
    stmt = _listed(client, query).order_by(Mailing.created_at.desc(), Mailing.id.desc())
    if query.cursor:
        after_ts, after_id = decode_cursor(query.cursor)
        stmt = stmt.where(tuple_(Mailing.created_at, Mailing.id) < tuple_(after_ts, after_id))
    else:
        stmt = stmt.offset((query.page - 1) * query.limit)
    rows = list((await session.scalars(stmt.limit(query.limit + 1))).all())
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    total = await session.scalar(
        select(func.count()).select_from(_listed(client, query).subquery())
    )
    found = await deliveries(session, [r.id for r in rows])
    return MailingPage(
        data=[mailing_detail(r, found.get(r.id, Delivery()), view) for r in rows],
        meta=MailingPageMeta(
            page=query.page,
            limit=query.limit,
            total=total or 0,
            next_cursor=encode_cursor(rows[-1].created_at, rows[-1].id) if more else None,
        ),
    )


def encode_position(position: int) -> str:
    """An opaque cursor: base64url of the last row's position (recipient id, row number)."""
    return base64.urlsafe_b64encode(json.dumps([position]).encode()).decode().rstrip("=")


def decode_position(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        (position,) = json.loads(raw)
        if isinstance(position, int) and not isinstance(position, bool):
            return position
    except (ValueError, TypeError, binascii.Error):
        pass
    raise ApiError(
        "cursor is malformed; pass back the nextCursor of a previous page", field="cursor"
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
    await _owned(session, client, mailing_id)
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
            limit=limit, next_cursor=encode_position(page[-1].id) if len(rows) > limit else None
        ),
    )


async def list_errors(
    session: AsyncSession, client: Client, mailing_id: uuid.UUID, *, cursor: str | None, limit: int
) -> MailingErrorPage:
    """The file's invalid rows in file order (keyset on the row number)."""
    await _owned(session, client, mailing_id)
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
            next_cursor=encode_position(page[-1].row_number) if len(rows) > limit else None,
        ),
    )


# --- controls --------------------------------------------------------------------------------


async def _claim(
    session: AsyncSession,
    client: Client,
    mailing_id: uuid.UUID,
    *,
    allowed: tuple[str, ...],
    action: str,
    values: dict[str, Any],
) -> Mailing:
    """One guarded UPDATE: the mailing moves only from an allowed status (it holds the row lock
    for the rest of the transaction); 404 unknown (or another tenant's), 409 otherwise."""
    row = await session.scalar(
        update(Mailing)
        .where(
            Mailing.id == mailing_id,
            owned_by(Mailing.tenant_id, client),
            Mailing.status.in_(allowed),
        )
        .values(updated_at=func.now(), **values)
        .returning(Mailing)
        .execution_options(populate_existing=True)
    )
    if row is not None:
        return row
    status = await session.scalar(
        select(Mailing.status).where(Mailing.id == mailing_id, owned_by(Mailing.tenant_id, client))
    )
    if status is None:
        raise _not_found(mailing_id)
    states = " or ".join((", ".join(allowed[:-1]), allowed[-1]) if len(allowed) > 1 else allowed)
    raise ConflictError(
        f"mailing {mailing_id} is {status}; only a {states} mailing can be {action}",
        mailingStatus=status,
    )


async def pause(
    session: AsyncSession, client: Client, mailing_id: uuid.UUID, view: View
) -> MailingDetail:
    """PARSING or RUNNING → PAUSED: the dispatcher sends nothing more until resumed."""
    async with session.begin():
        row = await _claim(
            session,
            client,
            mailing_id,
            allowed=("PARSING", "RUNNING"),
            action="paused",
            values={"status": "PAUSED"},
        )
        return await _detail(session, row, view)


async def resume(
    session: AsyncSession, client: Client, mailing_id: uuid.UUID, view: View
) -> MailingDetail:
    """PAUSED → RUNNING, or back to PARSING if it was paused before its parse finished (the
    parser writes `rows_total` when it ends): the dispatcher must never see a half-parsed list."""
    parsed = ~literal_column(UNPARSED_SQL, Boolean())  # a PAUSED mailing: rows_total > 0
    async with session.begin():
        row = await _claim(
            session,
            client,
            mailing_id,
            allowed=("PAUSED",),
            action="resumed",
            values={
                "status": case((parsed, "RUNNING"), else_="PARSING"),
                "started_at": case(
                    (parsed, func.coalesce(Mailing.started_at, func.now())), else_=None
                ),
            },
        )
        return await _detail(session, row, view)


async def cancel(
    session: AsyncSession, client: Client, mailing_id: uuid.UUID, view: View
) -> MailingDetail:
    """PARSING, RUNNING or PAUSED → CANCELLED, in one transaction with its effects: recipients
    not yet dispatched are CANCELLED, and so are dispatched ones whose email is still PENDING —
    that email is FAILED ('mailing cancelled'), so the consumer will not send it. An email already
    SENDING is left to finish."""
    async with session.begin():
        row = await _claim(
            session,
            client,
            mailing_id,
            allowed=("PARSING", "RUNNING", "PAUSED"),
            action="cancelled",
            values={"status": "CANCELLED", "finished_at": func.now()},
        )
        await session.execute(
            update(MailingRecipient)
            .where(MailingRecipient.mailing_id == mailing_id, MailingRecipient.status == "PENDING")
            .values(status="CANCELLED")
        )
        await session.execute(
            text(
                "WITH failed AS ("
                " UPDATE emails SET status = 'FAILED', failed_at = now(), updated_at = now(),"
                " last_error = :error"
                " WHERE id IN (SELECT email_id FROM mailing_recipients"
                "   WHERE mailing_id = :id AND status = 'QUEUED' AND email_id IS NOT NULL)"
                " AND status = 'PENDING' RETURNING id"
                ") UPDATE mailing_recipients SET status = 'CANCELLED'"
                " WHERE mailing_id = :id AND email_id IN (SELECT id FROM failed)"
            ),
            {"id": mailing_id, "error": CANCELLED_ERROR},
        )
        return await _detail(session, row, view)


async def retry_failed(
    session: AsyncSession, client: Client, mailing_id: uuid.UUID, view: View
) -> MailingDetail:
    """Recipients whose email FAILED go back to PENDING (no email, no token) for the dispatcher
    to send again; a COMPLETED mailing with such recipients is RUNNING again. 409 when the
    mailing is CANCELLED (or FAILED)."""
    async with session.begin():
        row = await _claim(
            session,
            client,
            mailing_id,
            allowed=("PARSING", "RUNNING", "PAUSED", "COMPLETED"),
            action="retried",
            values={},
        )
        reset = await session.execute(
            update(MailingRecipient)
            .where(
                MailingRecipient.mailing_id == mailing_id,
                MailingRecipient.status == "QUEUED",
                MailingRecipient.email_id == Email.id,
                Email.status == "FAILED",
            )
            .values(status="PENDING", email_id=None, token_hash=None, dispatched_at=None)
            .execution_options(synchronize_session=False)
        )
        if reset.rowcount and row.status == "COMPLETED":  # type: ignore[attr-defined]
            running = await session.scalar(
                update(Mailing)
                .where(Mailing.id == mailing_id)
                .values(status="RUNNING", finished_at=None, updated_at=func.now())
                .returning(Mailing)
                .execution_options(populate_existing=True)
            )
            assert running is not None  # locked by the claim above
            row = running
        return await _detail(session, row, view)
