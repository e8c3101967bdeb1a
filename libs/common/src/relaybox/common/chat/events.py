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

from sqlalchemy import String, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from relaybox.common.outbox import EVENTS, NOTIFY_CHANNEL

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


_RECORD = text(
    """
WITH event AS (
    INSERT INTO chat_events (tenant_id, kind, conversation_id, message_id, audience, payload)
    VALUES (:tenant, :kind, :conversation_id, :message_id, :audience, :data)
    RETURNING id, xid, payload
), readers AS (
    INSERT INTO chat_event_readers (tenant_id, user_id, xid, event_id)
    SELECT :tenant, reader, event.xid, event.id FROM event, unnest(:users) AS reader
), carriers AS (
    INSERT INTO outbox (message_id, destination, routing_key, payload, headers, xid)
    SELECT gen_random_uuid(), :destination, :routing_key,
           jsonb_build_object('id', event.id, 'xid', event.xid, 'tenant', :tenant,
                              'type', :kind, 'to', b.batch -> 'to', 'data', event.payload),
           jsonb_build_object('BCC', b.batch -> 'BCC'),
           event.xid
    FROM event, jsonb_array_elements(:batches) WITH ORDINALITY AS b(batch, n)
    ORDER BY b.n
), wake AS (
    SELECT pg_notify(:channel, '')
)
SELECT event.id FROM event, wake
"""
).bindparams(
    bindparam("conversation_id", type_=UUID(as_uuid=True)),
    bindparam("message_id", type_=UUID(as_uuid=True)),
    bindparam("audience", type_=ARRAY(String())),
    bindparam("users", type_=ARRAY(String())),
    bindparam("data", type_=JSONB()),
    bindparam("batches", type_=JSONB()),
)
"""An event, its readers, the outbox rows that carry it (one per batch of users) and the
publisher's wake-up: one statement, so one round trip per event."""


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
    batches = [
        {"to": list(batch), "BCC": [user_route(tenant, user) for user in batch]}
        for batch in _batches(users, fanout_batch)
    ]
    event_id = await session.scalar(
        _RECORD,
        {
            "tenant": tenant,
            "kind": kind,
            "conversation_id": conversation_id,
            "message_id": message_id,
            "audience": None if kind == MESSAGE_CREATED else users,
            "data": data,
            "users": users,
            "batches": batches,
            "destination": EVENTS,
            "routing_key": ROUTING_KEY,
            "channel": NOTIFY_CHANNEL,
        },
    )
    assert event_id is not None
    return int(event_id)


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
