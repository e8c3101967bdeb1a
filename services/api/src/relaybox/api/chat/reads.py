"""Read receipts: a read moves the caller's copies up to a message to READ (the first read time
is kept) and their watermark forward, and tells the senders (`message.status` READ) and the
reader's other clients (`read`) in the same transaction; the receipts of a message for its
sender and admins."""

from __future__ import annotations

import uuid

from litestar.exceptions import PermissionDeniedException
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client
from relaybox.api.chat.access import MANAGERS, current_member
from relaybox.api.chat.history import visible
from relaybox.api.chat.schemas import ReadResult, Receipts, ReceiptSummary, RecipientReceipt
from relaybox.common.chat.delivery import RecipientStatus, statuses_before
from relaybox.common.chat.events import READ, Move, record, record_statuses
from relaybox.common.db.models import ChatRecipient
from relaybox.common.settings import ChatSettings

DEFAULT_FANOUT_BATCH = ChatSettings().fanout_batch


def read_ctes(
    *, reader: str, conversation: str, seq: str, read: str, movable: str, source: str = ""
) -> str:
    """The two CTEs of a read up to a seq, written once for `mark_read` and the chat post
    (replying is reading): `marked`, the reader's copies up to it moved to READ (`read`, from
    the statuses `movable`; the first read time kept), returning each copy's message and sender;
    and `watermark`, each of the reader's membership intervals' watermark moved up to it, at
    most to the interval's end, never back, returning the new watermark and the interval's end.

    The arguments are SQL expressions: parameters, or columns of `source`, a relation the
    statement defines before (with one, nothing is read unless it has a row). Constants of the
    code, never input."""
    joined = f"{source}, " if source else ""
    from_source = f"FROM {source}" if source else ""
    cap = f"least({seq}, coalesce(m.left_seq, {seq}))"
    return f"""marked AS (
    UPDATE chat_recipients r
    SET status = {read}, read_at = now(), delivered_at = coalesce(r.delivered_at, now())
    FROM {joined}chat_messages sent
    WHERE r.user_id = {reader} AND r.conversation_id = {conversation} AND r.seq <= {seq}
      AND r.read_at IS NULL AND r.status = ANY({movable}) AND sent.id = r.message_id
    RETURNING r.message_id, sent.sender_id
), watermark AS (
    UPDATE chat_members m
    SET read_seq = {cap}, read_at = now()
    {from_source}
    WHERE m.conversation_id = {conversation} AND m.user_id = {reader} AND m.joined_seq < {seq}
      AND m.read_seq < {cap}
    RETURNING m.read_seq, m.left_seq
)"""  # noqa: S608 - composed of constants of the code


_READS = read_ctes(
    reader="$1::text",
    conversation="$2::uuid",
    seq="$3::bigint",
    read="$4::text",
    movable="$5::text[]",
)
_MARK_READ_SQL = f"""WITH {_READS}
SELECT ARRAY(SELECT message_id FROM marked ORDER BY message_id),
       ARRAY(SELECT sender_id FROM marked ORDER BY message_id),
       (SELECT read_seq FROM watermark WHERE left_seq IS NULL)"""  # noqa: S608 - constants
READ_FROM = statuses_before(RecipientStatus.READ)
"""The statuses a copy becomes READ from."""


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
    at most to the interval's end, never back (`read_ctes`). Returns how many copies became
    READ.

    The copies that moved are announced to their senders (`message.status` READ); a move of the
    current interval's watermark to the reader (`read`), unless `announce_watermark` is off."""
    conn = await session.connection()
    marked = await conn.exec_driver_sql(
        _MARK_READ_SQL, (client.id, conversation_id, seq, RecipientStatus.READ.value, READ_FROM)
    )
    message_ids, senders, current = tuple(marked.one())
    await record_statuses(
        session,
        tenant=client.tenant,
        status=RecipientStatus.READ.value,
        moves=[
            Move(m, conversation_id, sender, client.id)
            for m, sender in zip(message_ids, senders, strict=True)
        ],
        fanout_batch=fanout_batch,
    )
    if announce_watermark and current is not None:
        await record(
            session,
            tenant=client.tenant,
            kind=READ,
            data={"conversationId": str(conversation_id), "readUpToSeq": current},
            audience=[client.id],
            conversation_id=conversation_id,
            fanout_batch=fanout_batch,
        )
    return len(message_ids)


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
