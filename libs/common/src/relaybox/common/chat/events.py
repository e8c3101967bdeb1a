"""Chat events: what connected clients are told, written in the transaction that makes the
change (docs/messenger/stream.md).

Each event is one `chat_events` row (for a resume, read back from PostgreSQL) and, in the same
transaction, outbox rows to the `events` destination that carry it live to the realtime replicas:
one row per `fanout_batch` users of its audience, whose routing keys ride in the `BCC` header
(RabbitMQ's sender-selected distribution: every replica bound to one of the keys gets one copy;
the broker strips `BCC` before delivery, so the users are repeated in the body's `to`).

Who sees an event is decided here, once, under the lock of the change, and written as one
`chat_event_readers` row per user (the index a resume reads):
- `message.created`: the sender and the recipients of the message's copies (the event row's
  `audience` stays NULL: the copies record them, and may be thousands);
- any other kind: the users listed in `audience`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from relaybox.common.db.models import ChatEvent
from relaybox.common.outbox import EVENTS, enqueue

ROUTING_KEY = "chat.event"
"""The outbox rows' own routing key (bound to no queue: the BCC keys route them)."""

MESSAGE_CREATED = "message.created"
MESSAGE_STATUS = "message.status"
READ = "read"
MEMBER_JOINED = "member.joined"
MEMBER_LEFT = "member.left"
MEMBER_KICKED = "member.kicked"
MEMBER_ROLE = "member.role"
CONVERSATION_CREATED = "conversation.created"
CONVERSATION_UPDATED = "conversation.updated"
KINDS = (
    MESSAGE_CREATED,
    MESSAGE_STATUS,
    READ,
    MEMBER_JOINED,
    MEMBER_LEFT,
    MEMBER_KICKED,
    MEMBER_ROLE,
    CONVERSATION_CREATED,
    CONVERSATION_UPDATED,
)


def user_route(tenant: str, user: str) -> str:
    """The routing key of one user's events: `u.` and a digest of (tenant, user), so that any
    tenant and user id (up to 255 characters each, dots included) fits AMQP's 255 bytes."""
    digest = hashlib.blake2b(f"{tenant}\x1f{user}".encode(), digest_size=16).hexdigest()
    return f"u.{digest}"


def _batches(users: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(users), size):
        yield users[start : start + size]


async def record(
    session: AsyncSession | AsyncConnection,
    *,
    tenant: str,
    kind: str,
    data: dict[str, Any],
    audience: Sequence[str],
    conversation_id: uuid.UUID | None = None,
    message_id: uuid.UUID | None = None,
    fanout_batch: int = 250,
) -> int:
    """Write one event for `audience` (users of `tenant`) and the outbox rows that carry it live;
    returns the event's id. `data` is the frame's body (JSON-ready)."""
    users = list(dict.fromkeys(audience))  # once each, in order
    row = (
        await session.execute(
            insert(ChatEvent)
            .values(
                tenant_id=tenant,
                kind=kind,
                conversation_id=conversation_id,
                message_id=message_id,
                audience=None if kind == MESSAGE_CREATED else users,
                payload=data,
            )
            .returning(ChatEvent.id, ChatEvent.xid)
        )
    ).one()
    event_id, xid = int(row[0]), int(row[1])
    await session.execute(
        text(
            "INSERT INTO chat_event_readers (tenant_id, user_id, xid, event_id) "
            "SELECT :tenant, reader, :xid, :event FROM unnest(CAST(:users AS varchar[])) reader"
        ),
        {"tenant": tenant, "xid": xid, "event": event_id, "users": users},
    )
    for batch in _batches(users, fanout_batch):
        await enqueue(
            session,
            routing_key=ROUTING_KEY,
            destination=EVENTS,
            headers={"BCC": [user_route(tenant, user) for user in batch]},
            payload={
                "id": event_id,
                "xid": xid,
                "tenant": tenant,
                "type": kind,
                "to": list(batch),
                "data": data,
            },
            xid=xid,
        )
    return event_id


class Move(NamedTuple):
    """A copy that moved: the message's sender is told."""

    message_id: uuid.UUID
    conversation_id: uuid.UUID
    sender_id: str
    recipient_id: str


async def record_statuses(
    session: AsyncSession | AsyncConnection,
    *,
    tenant: str,
    status: str,
    moves: Iterable[Move],
    at: datetime | None = None,
    fanout_batch: int = 250,
) -> None:
    """`message.status` events for copies that moved to `status`: one per sender and
    conversation, listing the copies (`{messageId, userId}`)."""
    grouped: dict[tuple[str, uuid.UUID], list[dict[str, str]]] = defaultdict(list)
    for move in moves:
        grouped[(move.sender_id, move.conversation_id)].append(
            {"messageId": str(move.message_id), "userId": move.recipient_id}
        )
    when = (at or datetime.now(UTC)).isoformat()
    for (sender, conversation_id), copies in grouped.items():
        await record(
            session,
            tenant=tenant,
            kind=MESSAGE_STATUS,
            data={
                "conversationId": str(conversation_id),
                "status": status,
                "at": when,
                "copies": copies,
            },
            audience=[sender],
            conversation_id=conversation_id,
            fanout_batch=fanout_batch,
        )
