"""Read receipts: a read moves the caller's copies up to a message to READ (the first read time
is kept) and their watermark forward, and tells the senders (`message.status` READ) and the
reader's other clients (`read`) in the same transaction; the receipts of a message for its
sender and admins."""

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
from relaybox.common.chat.events import READ, Move, record, record_statuses
from relaybox.common.db.models import ChatMember, ChatMessage, ChatRecipient
from relaybox.common.settings import ChatSettings

DEFAULT_FANOUT_BATCH = ChatSettings().fanout_batch


async def mark_read(
    session: AsyncSession,
    client: Client,
    conversation_id: uuid.UUID,
    seq: int,
    *,
    fanout_batch: int = DEFAULT_FANOUT_BATCH,
    announce_watermark: bool = True,
) -> int:
    """The caller has read the conversation up to `seq`: their copies up to it are READ (the
    first read time is kept) and each of their membership intervals' watermark moves up to it,
    at most to the interval's end, never back. Returns how many copies became READ.

    The copies that moved are announced to their senders (`message.status` READ); a move of the
    current interval's watermark to the reader (`read`), unless `announce_watermark` is off."""
    r = ChatRecipient
    moved = (
        await session.execute(
            update(r)
            .where(
                r.user_id == client.id,
                r.conversation_id == conversation_id,
                r.seq <= seq,
                r.read_at.is_(None),
                may_become(r.status, RecipientStatus.READ),
                ChatMessage.id == r.message_id,
            )
            .values(
                status=RecipientStatus.READ.value,
                read_at=func.now(),
                delivered_at=func.coalesce(r.delivered_at, func.now()),
            )
            .returning(r.message_id, ChatMessage.sender_id)
        )
    ).all()
    cap = func.least(seq, func.coalesce(ChatMember.left_seq, seq))
    watermarks = (
        await session.execute(
            update(ChatMember)
            .where(
                ChatMember.conversation_id == conversation_id,
                ChatMember.user_id == client.id,
                ChatMember.joined_seq < seq,
                ChatMember.read_seq < cap,
            )
            .values(read_seq=cap, read_at=func.now())
            .returning(ChatMember.read_seq, ChatMember.left_seq)
        )
    ).all()
    await record_statuses(
        session,
        tenant=client.tenant,
        status=RecipientStatus.READ.value,
        moves=[Move(m, conversation_id, sender, client.id) for m, sender in moved],
        fanout_batch=fanout_batch,
    )
    current = [read_seq for read_seq, left_seq in watermarks if left_seq is None]
    if announce_watermark and current:
        await record(
            session,
            tenant=client.tenant,
            kind=READ,
            data={"conversationId": str(conversation_id), "readUpToSeq": current[0]},
            audience=[client.id],
            conversation_id=conversation_id,
            fanout_batch=fanout_batch,
        )
    return len(moved)


async def read(
    session: AsyncSession,
    client: Client,
    message_id: uuid.UUID,
    *,
    fanout_batch: int = DEFAULT_FANOUT_BATCH,
) -> ReadResult:
    async with session.begin():
        message = await visible(session, client, message_id)
        marked = await mark_read(
            session, client, message.conversation_id, message.seq, fanout_batch=fanout_batch
        )
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
