"""POST /chat/messages: the message, one copy per other current member, the outbox rows that
push them and the `message.created` event, in one transaction under the conversation's lock."""

from __future__ import annotations

import uuid

import msgspec
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client
from relaybox.api.chat.access import forbidden
from relaybox.api.chat.reads import READ_FROM, read_ctes
from relaybox.api.chat.schemas import MessageView, PostMessageRequest
from relaybox.api.chat.views import message_views
from relaybox.api.errors import ApiError, ConflictError, NotFoundError
from relaybox.api.idempotency import Idempotency, StoredResponse
from relaybox.common.chat.delivery import RecipientStatus
from relaybox.common.chat.events import MESSAGE_CREATED, Event, Move, record_all, status_events
from relaybox.common.db.models import ChatAttachment, ChatMessage, ChatMessageAttachment
from relaybox.common.messaging.topology import CHAT_DELIVER
from relaybox.common.outbox import WORK, trace_headers

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


async def _attach(
    session: AsyncSession, client: Client, message_id: uuid.UUID, ids: list[uuid.UUID]
) -> None:
    """Attach the caller's uploads `ids` to the message, in order (400 naming any that is not
    theirs); they are locked first, so the sweeper cannot delete them meanwhile."""
    owned = set(
        (
            await session.scalars(
                select(ChatAttachment.id)
                .where(
                    ChatAttachment.id.in_(ids),
                    ChatAttachment.tenant_id == client.tenant,
                    ChatAttachment.uploader_id == client.id,
                )
                .with_for_update(key_share=True)
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
    await session.execute(
        insert(ChatMessageAttachment).values(
            [
                {"message_id": message_id, "attachment_id": a, "position": i}
                for i, a in enumerate(ids)
            ]
        )
    )
    await session.execute(
        update(ChatAttachment)
        .where(ChatAttachment.id.in_(ids))
        .values(attached_at=func.coalesce(ChatAttachment.attached_at, func.now()))
    )


_LOCK_SQL = (
    "SELECT kind, last_seq FROM chat_conversations "
    "WHERE id = $1::uuid AND tenant_id = $2::text FOR UPDATE"
)
"""Posts, joins, leaves and kicks of one conversation happen one at a time, under this lock; the
post's next statement (a new snapshot) sees every membership change committed before it."""

# The post itself, in one statement: the message (its seq is the locked conversation's next),
# the conversation's advance, one copy per other current member, the outbox rows that push them
# (`deliver_payload`, one per `fanout_batch` recipients), and the sender's read of everything up
# to it (replying is reading: their copies to READ and their watermark forward, by the same
# CTEs as `mark_read`: `read_ctes`, fed from `message` so that nothing is read unless it posted).
# It writes nothing unless the sender is a current member with no message under this
# clientMessageId; every write hangs on `message`, so an insert that conflicts with the same
# clientMessageId just committed in another conversation writes nothing at all.
_READ = RecipientStatus.READ.value
_READS = read_ctes(
    reader="$3::text",
    conversation="$1::uuid",
    seq="message.seq",
    read="$12::text",
    movable="$13::text[]",
    source="message",
)
_POST_SQL = f"""
WITH member AS (
    SELECT EXISTS (SELECT FROM chat_members
                   WHERE conversation_id = $1::uuid AND user_id = $3::text
                   AND left_seq IS NULL) AS current,
           EXISTS (SELECT FROM chat_members
                   WHERE conversation_id = $1::uuid AND user_id = $3::text) AS ever
), earlier AS (
    SELECT id FROM chat_messages
    WHERE tenant_id = $2::text AND sender_id = $3::text AND client_message_id = $7::text
), message AS (
    INSERT INTO chat_messages (id, conversation_id, tenant_id, seq, sender_id, text,
                               client_message_id)
    SELECT $4::uuid, $1::uuid, $2::text, $5::bigint, $3::text, $6::text, $7::text
    FROM member WHERE member.current AND NOT EXISTS (SELECT FROM earlier)
    ON CONFLICT (tenant_id, sender_id, client_message_id) DO NOTHING
    RETURNING id, seq, created_at
), advanced AS (
    UPDATE chat_conversations SET last_seq = message.seq, last_activity_at = now()
    FROM message WHERE chat_conversations.id = $1::uuid
), copies AS (
    INSERT INTO chat_recipients (message_id, user_id, conversation_id, seq)
    SELECT message.id, m.user_id, m.conversation_id, message.seq
    FROM message, chat_members m
    WHERE m.conversation_id = $1::uuid AND m.left_seq IS NULL AND m.user_id <> $3::text
    RETURNING user_id
), deliveries AS (
    INSERT INTO outbox (message_id, destination, routing_key, payload, headers)
    SELECT gen_random_uuid(), $8::text, $9::text,
           jsonb_build_object('messageId', $4::uuid,
                              'recipients', jsonb_agg(user_id ORDER BY user_id)),
           $10::text::jsonb
    FROM (SELECT user_id, (row_number() OVER (ORDER BY user_id) - 1) / $11::int AS batch
          FROM copies) numbered
    GROUP BY batch
), {_READS}
SELECT member.current, member.ever, (SELECT id FROM earlier),
       (SELECT created_at FROM message),
       ARRAY(SELECT user_id FROM copies ORDER BY user_id),
       ARRAY(SELECT message_id FROM marked ORDER BY message_id),
       ARRAY(SELECT sender_id FROM marked ORDER BY message_id)
FROM member
"""  # noqa: S608 - composed of constants of the code


async def post(
    session: AsyncSession,
    client: Client,
    request: PostMessageRequest,
    *,
    fanout_batch: int,
    idempotency: Idempotency | None,
    correlation_id: str | None,
) -> StoredResponse:
    """202 with the new message; 200 with the stored one for a repeated `clientMessageId`.

    Three statements in one transaction (BEGIN and COMMIT besides): the conversation's lock,
    the post (`_POST_SQL`) and its events (`record_all`); attachments and an Idempotency-Key
    add their own.
    """
    conversation_id = request.conversation_id
    async with session.begin():
        if idempotency is not None and (stored := await idempotency.replay(session)):
            return stored
        conn = await session.connection()
        locked = (await conn.exec_driver_sql(_LOCK_SQL, (conversation_id, client.tenant))).first()
        if locked is None:
            raise NotFoundError.of("conversation", conversation_id)
        kind, last_seq = tuple(locked)
        message_id = uuid.uuid4()
        posted = await conn.exec_driver_sql(
            _POST_SQL,
            (
                conversation_id,
                client.tenant,
                client.id,
                message_id,
                last_seq + 1,
                request.text,
                request.client_message_id,
                WORK,
                CHAT_DELIVER,
                msgspec.json.encode(trace_headers(correlation_id)).decode(),
                fanout_batch,
                _READ,
                READ_FROM,
            ),
        )
        current, ever, earlier_id, created_at, recipients, read_ids, read_senders = tuple(
            posted.one()
        )
        if not (ever or kind == "channel"):
            raise NotFoundError.of("conversation", conversation_id)
        if earlier_id is not None:
            return await _repeat(session, await session.get_one(ChatMessage, earlier_id), request)
        if not current:
            raise forbidden("only a current member may post")
        if created_at is None:  # the same clientMessageId, just committed in another conversation
            raced = await _earlier(session, client, request.client_message_id)
            assert raced is not None
            return await _repeat(session, raced, request)
        view = MessageView(
            id=message_id,
            conversation_id=conversation_id,
            seq=last_seq + 1,
            sender_id=client.id,
            text=request.text,
            attachments=[],
            created_at=created_at,
            client_message_id=request.client_message_id,
        )
        if request.attachment_ids:
            await _attach(session, client, message_id, request.attachment_ids)
            (view,) = await message_views(session, [view])
        response = StoredResponse.of(202, view)
        moves = [
            Move(read_id, conversation_id, sender, client.id)
            for read_id, sender in zip(read_ids, read_senders, strict=True)
        ]
        await record_all(
            session,
            tenant=client.tenant,
            events=[
                *status_events(_READ, moves),  # the senders of what the reply reads
                Event(
                    MESSAGE_CREATED,
                    response.body,  # the message as GET /chat/messages/{id} shows it
                    [client.id, *recipients],
                    conversation_id,
                    message_id,
                ),
            ],
            fanout_batch=fanout_batch,
        )
        if idempotency is not None:
            await idempotency.store(session, response)
    return response
