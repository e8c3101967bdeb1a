"""Message service: the SQL behind POST /messages/send, GET /messages/{id} and retries."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client, owned_by
from relaybox.api.conversations.service import upsert_conversation
from relaybox.api.errors import ConflictError, NotFoundError
from relaybox.api.idempotency import Idempotency, StoredResponse
from relaybox.api.messages.schemas import MessageDetail, SendMessageRequest, message_detail
from relaybox.common.db.models import Message
from relaybox.common.messaging.topology import META_SEND
from relaybox.common.outbox import enqueue, trace_headers

IDEMPOTENCY_SCOPE = META_SEND  # Idempotency-Keys of POST /messages/send


async def send_message(
    session: AsyncSession,
    *,
    tenant: str,
    request: SendMessageRequest,
    idempotency: Idempotency | None,
    correlation_id: str | None,
) -> StoredResponse:
    """Write the PENDING message of `tenant` (the provider account's owner), its conversation
    and its outbox row in one transaction: 202.

    A message already stored under the same (channel, clientMessageId) — even by a concurrent
    request — is answered as it is now with a 200, and nothing is written: the conversation
    upsert runs in a savepoint that is rolled back when the message insert finds the conflict.
    """
    async with session.begin():
        if idempotency is not None and (stored := await idempotency.replay(session)):
            return stored
        savepoint = await session.begin_nested()
        conversation_id = await upsert_conversation(
            session,
            tenant=tenant,
            channel=request.channel,
            participant_id=request.to,
            text=request.text,
        )
        inserted = await session.scalar(
            pg_insert(Message)
            .values(
                id=uuid.uuid4(),
                conversation_id=conversation_id,
                tenant_id=tenant,
                direction="outbound",
                channel=request.channel,
                participant_id=request.to,
                text=request.text,
                status="PENDING",
                client_message_id=request.client_message_id,
                sort_at=func.now(),
            )
            .on_conflict_do_nothing(
                index_elements=[Message.tenant_id, Message.channel, Message.client_message_id]
            )
            .returning(Message)
        )
        if inserted is None:
            await savepoint.rollback()
            existing = await session.scalar(
                select(Message).where(
                    Message.tenant_id == tenant,
                    Message.channel == request.channel,
                    Message.client_message_id == request.client_message_id,
                )
            )
            assert existing is not None  # the conflicting row is committed, hence visible
            response = StoredResponse.of(200, message_detail(existing))
        else:
            await savepoint.commit()
            await enqueue(
                session,
                routing_key=META_SEND,
                payload={"id": str(inserted.id)},
                headers=trace_headers(correlation_id),
            )
            response = StoredResponse.of(202, message_detail(inserted))
        if idempotency is not None:
            await idempotency.store(session, response)
    return response


async def get_message(
    session: AsyncSession, client: Client, message_id: uuid.UUID
) -> MessageDetail:
    row = await session.scalar(
        select(Message).where(Message.id == message_id, owned_by(Message.tenant_id, client))
    )
    if row is None:
        raise NotFoundError.of("message", message_id)
    return message_detail(row)


async def retry_message(
    session: AsyncSession, client: Client, message_id: uuid.UUID, *, correlation_id: str | None
) -> MessageDetail:
    """Claim a FAILED outbound message back to PENDING and enqueue it, in one transaction.

    The guarded UPDATE is the claim: of two concurrent retries only one finds it FAILED.
    """
    async with session.begin():
        row = await session.scalar(
            update(Message)
            .where(
                Message.id == message_id,
                owned_by(Message.tenant_id, client),
                Message.direction == "outbound",
                Message.status == "FAILED",
            )
            .values(
                status="PENDING",
                attempts=0,
                throttled=0,
                last_error=None,
                failed_at=None,
                updated_at=func.now(),
            )
            .returning(Message)
            .execution_options(populate_existing=True)
        )
        if row is None:
            status = await session.scalar(
                select(Message.status).where(
                    Message.id == message_id, owned_by(Message.tenant_id, client)
                )
            )
            if status is None:
                raise NotFoundError.of("message", message_id)
            raise ConflictError(
                f"message {message_id} is {status}; only a FAILED outbound message can be retried",
                messageStatus=status,
            )
        await enqueue(
            session,
            routing_key=META_SEND,
            payload={"id": str(message_id)},
            headers=trace_headers(correlation_id),
        )
    return message_detail(row)
