"""POST /chat/messages: the message, one copy per other current member, the outbox rows that
push them and the `message.created` event, in one transaction under the conversation's lock."""

from __future__ import annotations

import uuid

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client
from relaybox.api.chat.access import require_member, seat
from relaybox.api.chat.reads import mark_read
from relaybox.api.chat.schemas import PostMessageRequest
from relaybox.api.chat.views import message_views
from relaybox.api.errors import ApiError, ConflictError
from relaybox.api.idempotency import Idempotency, StoredResponse
from relaybox.common.chat.delivery import deliver_payload
from relaybox.common.chat.events import MESSAGE_CREATED, record
from relaybox.common.db.models import (
    ChatAttachment,
    ChatConversation,
    ChatMember,
    ChatMessage,
    ChatMessageAttachment,
    ChatRecipient,
)
from relaybox.common.messaging.topology import CHAT_DELIVER
from relaybox.common.outbox import enqueue, trace_headers

IDEMPOTENCY_SCOPE = "chat.post"


async def _stored(session: AsyncSession, message: ChatMessage, status: int) -> StoredResponse:
    (view,) = await message_views(session, [message])
    return StoredResponse.of(status, view)


async def _earlier(
    session: AsyncSession, client: Client, client_message_id: str | None
) -> ChatMessage | None:
    """The caller's message stored under this clientMessageId, if any."""
    return await session.scalar(
        select(ChatMessage).where(
            ChatMessage.tenant_id == client.tenant,
            ChatMessage.sender_id == client.id,
            ChatMessage.client_message_id == client_message_id,
        )
    )


async def _repeat(
    session: AsyncSession, earlier: ChatMessage, request: PostMessageRequest
) -> StoredResponse:
    """The answer to a repeated `clientMessageId`: the stored message (200) when it was posted
    to the same conversation; a 409 when the sender used the id in another one (nothing is
    posted: the id names one message of theirs)."""
    if earlier.conversation_id != request.conversation_id:
        raise ConflictError(
            f"clientMessageId {request.client_message_id!r} already names your message "
            f"{earlier.id} in another conversation; use a new id for a new message",
            field="clientMessageId",
        )
    return await _stored(session, earlier, 200)


async def _check_attachments(session: AsyncSession, client: Client, ids: list[uuid.UUID]) -> None:
    if not ids:
        return
    owned = set(
        (
            await session.scalars(
                select(ChatAttachment.id)
                .where(
                    ChatAttachment.id.in_(ids),
                    ChatAttachment.tenant_id == client.tenant,
                    ChatAttachment.uploader_id == client.id,
                )
                .with_for_update(key_share=True)  # the sweeper cannot delete them meanwhile
            )
        ).all()
    )
    missing = [str(i) for i in ids if i not in owned]
    if missing:
        raise ApiError(
            f"no upload of yours has the id {', '.join(missing)}: upload with POST "
            "/chat/attachments first",
            field="attachmentIds",
        )


async def post(
    session: AsyncSession,
    client: Client,
    request: PostMessageRequest,
    *,
    fanout_batch: int,
    idempotency: Idempotency | None,
    correlation_id: str | None,
) -> StoredResponse:
    """202 with the new message; 200 with the stored one for a repeated `clientMessageId`."""
    async with session.begin():
        if idempotency is not None and (stored := await idempotency.replay(session)):
            return stored
        found = await seat(session, client, request.conversation_id, lock=True)
        if request.client_message_id is not None:
            earlier = await _earlier(session, client, request.client_message_id)
            if earlier is not None:
                return await _repeat(session, earlier, request)
        require_member(found, "post")
        await _check_attachments(session, client, request.attachment_ids)
        savepoint = await session.begin_nested()
        seq = await session.scalar(
            update(ChatConversation)
            .where(ChatConversation.id == request.conversation_id)
            .values(last_seq=ChatConversation.last_seq + 1, last_activity_at=func.now())
            .returning(ChatConversation.last_seq)
        )
        assert seq is not None
        message = await session.scalar(
            pg_insert(ChatMessage)
            .values(
                id=uuid.uuid4(),
                conversation_id=request.conversation_id,
                tenant_id=client.tenant,
                seq=seq,
                sender_id=client.id,
                text=request.text,
                client_message_id=request.client_message_id,
            )
            .on_conflict_do_nothing(
                index_elements=[
                    ChatMessage.tenant_id,
                    ChatMessage.sender_id,
                    ChatMessage.client_message_id,
                ]
            )
            .returning(ChatMessage)
        )
        if message is None:  # the same clientMessageId, just committed in another conversation
            await savepoint.rollback()
            earlier = await _earlier(session, client, request.client_message_id)
            assert earlier is not None
            return await _repeat(session, earlier, request)
        await savepoint.commit()
        recipients = list(
            (
                await session.scalars(
                    insert(ChatRecipient)
                    .from_select(
                        ["message_id", "user_id", "conversation_id", "seq"],
                        select(
                            func.cast(message.id, ChatRecipient.message_id.type),
                            ChatMember.user_id,
                            ChatMember.conversation_id,
                            func.cast(seq, ChatRecipient.seq.type),
                        ).where(
                            ChatMember.conversation_id == request.conversation_id,
                            ChatMember.left_seq.is_(None),
                            ChatMember.user_id != client.id,
                        ),
                    )
                    .returning(ChatRecipient.user_id)
                )
            ).all()
        )
        # Replying is reading: the copies it moves to READ are announced to their senders; the
        # sender's watermark move is not (their clients see it in `message.created`: a post
        # always moves its sender's watermark to its own seq).
        await mark_read(
            session,
            client,
            request.conversation_id,
            seq,
            fanout_batch=fanout_batch,
            announce_watermark=False,
        )
        if request.attachment_ids:
            await session.execute(
                insert(ChatMessageAttachment).values(
                    [
                        {"message_id": message.id, "attachment_id": a, "position": i}
                        for i, a in enumerate(request.attachment_ids)
                    ]
                )
            )
            await session.execute(
                update(ChatAttachment)
                .where(ChatAttachment.id.in_(request.attachment_ids))
                .values(attached_at=func.coalesce(ChatAttachment.attached_at, func.now()))
            )
        headers = trace_headers(correlation_id)
        for start in range(0, len(recipients), fanout_batch):
            await enqueue(
                session,
                routing_key=CHAT_DELIVER,
                payload=deliver_payload(str(message.id), recipients[start : start + fanout_batch]),
                headers=headers,
            )
        response = await _stored(session, message, 202)
        await record(
            session,
            tenant=client.tenant,
            kind=MESSAGE_CREATED,
            data=response.body,  # the message as GET /chat/messages/{id} shows it
            audience=[client.id, *recipients],
            conversation_id=message.conversation_id,
            message_id=message.id,
            fanout_batch=fanout_batch,
        )
        if idempotency is not None:
            await idempotency.store(session, response)
    return response
