"""Controlling a mailing: pause, resume, cancel and retry-failed, each one guarded UPDATE of
its status with its effects in the same transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import (
    Boolean,
    case,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client, owned_by
from relaybox.api.errors import ConflictError, NotFoundError
from relaybox.api.mailings.reads import View, detail_of
from relaybox.api.mailings.schemas import (
    MailingDetail,
)
from relaybox.common.db.models import Email, Mailing, MailingRecipient
from relaybox.common.mailings.rules import UNPARSED_SQL, MailingStatus

CANCELLED_ERROR = "mailing cancelled"


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
        raise NotFoundError.of("mailing", mailing_id)
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
            allowed=(MailingStatus.PARSING, MailingStatus.RUNNING),
            action="paused",
            values={"status": MailingStatus.PAUSED},
        )
        return await detail_of(session, row, view)


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
            allowed=(MailingStatus.PAUSED,),
            action="resumed",
            values={
                "status": case((parsed, MailingStatus.RUNNING), else_=MailingStatus.PARSING),
                "started_at": case(
                    (parsed, func.coalesce(Mailing.started_at, func.now())), else_=None
                ),
            },
        )
        return await detail_of(session, row, view)


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
            allowed=(MailingStatus.PARSING, MailingStatus.RUNNING, MailingStatus.PAUSED),
            action="cancelled",
            values={"status": MailingStatus.CANCELLED, "finished_at": func.now()},
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
        return await detail_of(session, row, view)


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
            allowed=(
                MailingStatus.PARSING,
                MailingStatus.RUNNING,
                MailingStatus.PAUSED,
                MailingStatus.COMPLETED,
            ),
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
        if reset.rowcount and row.status == MailingStatus.COMPLETED:  # type: ignore[attr-defined]
            running = await session.scalar(
                update(Mailing)
                .where(Mailing.id == mailing_id)
                .values(status=MailingStatus.RUNNING, finished_at=None, updated_at=func.now())
                .returning(Mailing)
                .execution_options(populate_existing=True)
            )
            assert running is not None  # locked by the claim above
            row = running
        return await detail_of(session, row, view)
