"""Read receipts: a read moves the caller's copies up to a message to READ (the first read time
is kept) and their watermark forward; the receipts of a message for its sender and admins."""

from __future__ import annotations

import uuid

from litestar.exceptions import PermissionDeniedException
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client
from relaybox.api.chat.access import MANAGERS, current_member
from relaybox.api.chat.history import visible
from relaybox.api.chat.schemas import ReadResult, Receipts, ReceiptSummary, RecipientReceipt
from relaybox.common.chat.delivery import RecipientStatus, may_become
from relaybox.common.db.models import ChatMember, ChatRecipient


async def mark_read(
    session: AsyncSession, client: Client, conversation_id: uuid.UUID, seq: int
) -> int:
    """The caller has read the conversation up to `seq`: their copies up to it are READ (the
    first read time is kept) and each of their membership intervals' watermark moves up to it,
    at most to the interval's end, never back. Returns how many copies became READ."""
    marked = await session.execute(
        update(ChatRecipient)
        .where(
            ChatRecipient.user_id == client.id,
            ChatRecipient.conversation_id == conversation_id,
            ChatRecipient.seq <= seq,
            ChatRecipient.read_at.is_(None),
            may_become(ChatRecipient.status, RecipientStatus.READ),
        )
        .values(
            status=RecipientStatus.READ.value,
            read_at=func.now(),
            delivered_at=func.coalesce(ChatRecipient.delivered_at, func.now()),
        )
    )
    cap = func.least(seq, func.coalesce(ChatMember.left_seq, seq))
    await session.execute(
        update(ChatMember)
        .where(
            ChatMember.conversation_id == conversation_id,
            ChatMember.user_id == client.id,
            ChatMember.joined_seq < seq,
            ChatMember.read_seq < cap,
        )
        .values(read_seq=cap, read_at=func.now())
    )
    return int(marked.rowcount)  # type: ignore[attr-defined]


async def read(session: AsyncSession, client: Client, message_id: uuid.UUID) -> ReadResult:
    async with session.begin():
        message = await visible(session, client, message_id)
        marked = await mark_read(session, client, message.conversation_id, message.seq)
        member = await current_member(session, message.conversation_id, client.id)
    return ReadResult(
        conversation_id=message.conversation_id,
        message_id=message.id,
        seq=message.seq,
        marked_read=marked,
        read_up_to_seq=member.read_seq if member is not None else None,
    )


async def receipts(session: AsyncSession, client: Client, message_id: uuid.UUID) -> Receipts:
    """Every recipient's copy; for the sender, the conversation's owners and admins, and
    platform admins (all of them only in messages they may see)."""
    async with session.begin():
        message = await visible(session, client, message_id)
        if message.sender_id != client.id and not client.admin:
            member = await current_member(session, message.conversation_id, client.id)
            if member is None or member.role not in MANAGERS:
                raise PermissionDeniedException(
                    detail="receipts are for the message's sender and the conversation's "
                    "owners and admins"
                )
        rows = (
            await session.scalars(
                select(ChatRecipient)
                .where(ChatRecipient.message_id == message_id)
                .order_by(ChatRecipient.user_id)
            )
        ).all()
    counts = dict.fromkeys(RecipientStatus, 0)
    for row in rows:
        counts[RecipientStatus(row.status)] += 1
    return Receipts(
        message_id=message_id,
        summary=ReceiptSummary(
            total=len(rows),
            pending=counts[RecipientStatus.PENDING],
            sent=counts[RecipientStatus.SENT],
            delivered=counts[RecipientStatus.DELIVERED],
            read=counts[RecipientStatus.READ],
            failed=counts[RecipientStatus.FAILED],
        ),
        recipients=[
            RecipientReceipt(
                user_id=row.user_id,
                status=RecipientStatus(row.status),
                sent_at=row.sent_at,
                delivered_at=row.delivered_at,
                read_at=row.read_at,
                failed_at=row.failed_at,
                last_error=row.last_error,
            )
            for row in rows
        ],
    )
