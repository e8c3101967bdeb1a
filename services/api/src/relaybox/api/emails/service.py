"""Email service: the SQL behind POST /send and the delivery log."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
from sqlalchemy import Select, and_, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from relaybox.api.auth import Client, owned_by
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
from relaybox.api.idempotency import Idempotency, StoredResponse, lock_key, request_hash
from relaybox.api.pagination import decode_cursor, encode_cursor
from relaybox.common.db.models import Email
from relaybox.common.db.session import run_on_driver
from relaybox.common.messaging.topology import EMAIL_SEND
from relaybox.common.outbox import NOTIFY_CHANNEL, WORK, trace_headers

IDEMPOTENCY_SCOPE = "email.send"

# POST /send is the hot path: ONE statement, hence one round trip and one (implicit)
# transaction, writes the email, its outbox row, the NOTIFY that wakes the publisher and, with an
# Idempotency-Key, the stored answer. Data-modifying CTEs always run to completion; pg_notify runs
# only when the email was written and, like NOTIFY, is delivered on commit, never on rollback.
#
# With a key ($13, the name of its advisory lock; NULL without one) the statement first takes the
# key's lock (held by a request with the key that is still running: 409) and claims the key: the
# INSERT ... ON CONFLICT sees the latest committed row whatever the statement's snapshot, and
# takes it over only once it has expired. The email is written only if the claim succeeded; the
# stored answer is built from the same values (now() is the transaction's timestamp, hence the
# email's created_at). A key that holds a live answer is replayed by a second statement.
ACCEPT_SQL = """
WITH lock AS (
    SELECT $13::text IS NULL OR pg_try_advisory_xact_lock(hashtextextended($13::text, 0)) AS locked
), claim AS (
    INSERT INTO idempotency_keys AS k (client_id, scope, key, request_hash, status_code, response)
    SELECT $2::text, $14::text, $15::text, $16::text, 202,
           jsonb_build_object('id', $1::uuid, 'status', 'PENDING', 'createdAt', now())
    FROM lock WHERE lock.locked AND $13::text IS NOT NULL
    ON CONFLICT (client_id, scope, key) DO UPDATE SET
        request_hash = EXCLUDED.request_hash, status_code = EXCLUDED.status_code,
        response = EXCLUDED.response, created_at = now()
    WHERE k.created_at <= now() - make_interval(hours => $17::int)
    RETURNING 1
), email AS (
    INSERT INTO emails (id, tenant_id, to_address, from_address, subject, text_body, html_body)
    SELECT $1::uuid, $18::text, $3::text, $4::text, $5::text, $6::text, $7::text
    FROM lock WHERE lock.locked AND ($13::text IS NULL OR EXISTS (SELECT FROM claim))
    ON CONFLICT (id) DO NOTHING  -- a repeat after a lost connection whose first run committed
    RETURNING id, created_at
), queued AS (
    INSERT INTO outbox (message_id, destination, routing_key, payload, headers)
    SELECT $8::uuid, $9::text, $10::text, jsonb_build_object('id', email.id), $11::jsonb
    FROM email
), notified AS (
    SELECT pg_notify($12::text, '') FROM email
)
SELECT lock.locked, email.created_at FROM lock LEFT JOIN email ON true LEFT JOIN notified ON true
"""


@dataclass(frozen=True)
class EmailIntake:
    """POST /send as one dependency: the engine it writes through and the settings it applies.

    (One dependency, not three: Litestar resolves two or more in a task group per request.)
    """

    engine: AsyncEngine
    default_from: str
    idempotency_ttl_h: int

    async def accept(
        self,
        *,
        client: Client,
        request: SendEmailRequest,
        key: str | None,
        correlation_id: str | None,
    ) -> StoredResponse:
        """Accept one validated request of `client`, for its tenant (see `accept_email`)."""
        client_id = client.id
        idempotency = None
        if key is not None:
            fingerprint = request_hash(request.model_dump(by_alias=True))
            idempotency = Idempotency(
                client_id, IDEMPOTENCY_SCOPE, key, fingerprint, self.idempotency_ttl_h
            )
        return await accept_email(
            self.engine,
            client_id=client_id,
            tenant=client.tenant,
            request=request,
            default_from=self.default_from,
            idempotency=idempotency,
            correlation_id=correlation_id,
        )


_CREATED_AT_SQL = "SELECT created_at FROM emails WHERE id = $1"


async def accept_email(
    engine: AsyncEngine,
    *,
    client_id: str,
    tenant: str,
    request: SendEmailRequest,
    default_from: str,
    idempotency: Idempotency | None,
    correlation_id: str | None,
) -> StoredResponse:
    """Write the PENDING email of `tenant`, its outbox row and (with a key, stored under the
    client's id) the stored answer in one transaction, or replay the answer stored under the
    key (422 for another body, 409 while the first request with the key still runs).

    Safe to repeat after a lost connection (`run_on_driver`): a repeat writes under the same
    email id, so if the first run committed, the repeat writes nothing and answers with it.
    """
    email_id = uuid.uuid4()
    key = idempotency
    args = (
        email_id,
        client_id,
        request.to,
        request.from_ or default_from,
        request.subject,
        request.text,
        request.html,
        uuid.uuid4(),  # the outbox message id
        WORK,
        EMAIL_SEND,
        msgspec.json.encode(trace_headers(correlation_id)).decode(),
        NOTIFY_CHANNEL,
        lock_key(key.client_id, key.scope, key.key) if key else None,
        key and key.scope,
        key and key.key,
        key and key.fingerprint,
        key and key.ttl_h,
        tenant,
    )

    async def accept(conn: asyncpg.Connection, repeated: bool) -> StoredResponse:
        locked, created_at = await conn.fetchrow(ACCEPT_SQL, *args)
        if key is not None:
            if not locked:
                raise key.in_flight()
            if created_at is None:  # the key holds a live answer: replay it (or 422)
                return _replayed(await key.find(conn))
        elif created_at is None:  # only a repeat can find its email already written
            assert repeated, f"email id {email_id} taken"
            created_at = await conn.fetchval(_CREATED_AT_SQL, email_id)
        accepted = Accepted(id=email_id, status="PENDING", created_at=created_at)
        return StoredResponse(202, _to_json(accepted))

    return await run_on_driver(engine, accept)


def _replayed(stored: StoredResponse) -> StoredResponse:
    """The stored answer as the first one read: its timestamp re-encoded from the instant."""
    accepted = msgspec.convert(stored.body, Accepted)
    utc = msgspec.structs.replace(accepted, created_at=accepted.created_at.astimezone(UTC))
    return StoredResponse(stored.status_code, _to_json(utc))


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
    stmt = _filtered(query, client).order_by(Email.created_at.desc(), Email.id.desc())
    if query.cursor:
        after_ts, after_id = decode_cursor(query.cursor)
        stmt = stmt.where(tuple_(Email.created_at, Email.id) < tuple_(after_ts, after_id))
    else:
        stmt = stmt.offset((query.page - 1) * query.limit)
    rows = list((await session.scalars(stmt.limit(query.limit + 1))).all())
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    total = await session.scalar(
        select(func.count()).select_from(_filtered(query, client).subquery())
    )
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
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
