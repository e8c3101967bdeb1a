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

import msgspec
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


class Event(NamedTuple):
    """One event to record: its kind, the frame's body (JSON-ready) and who sees it."""

    kind: str
    data: dict[str, Any]
    audience: Sequence[str]
    conversation_id: uuid.UUID | None = None
    message_id: uuid.UUID | None = None


# Events, their readers, the outbox rows that carry them (one per batch of users) and the
# publisher's wake-up: one statement, so one round trip for any number of events. The ids are
# drawn first, one per input row in input order, so each event's readers and carriers are joined
# to it by its input number, never by the order the INSERT happens to assign them.
_RECORD_SQL = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset($2::text::jsonb) AS e(
        n int, kind text, conversation_id uuid, message_id uuid, audience text[], data jsonb,
        users text[], batches jsonb)
), ids AS MATERIALIZED (
    SELECT n, nextval(pg_get_serial_sequence('chat_events', 'id')) AS id
    FROM (SELECT n FROM input ORDER BY n) ordered
), xact AS (
    SELECT (pg_current_xact_id()::text)::bigint AS xid
), event AS (
    INSERT INTO chat_events (id, tenant_id, kind, conversation_id, message_id, audience, payload)
    OVERRIDING SYSTEM VALUE
    SELECT ids.id, $1::text, kind, conversation_id, message_id, audience, data
    FROM input JOIN ids USING (n)
), readers AS (
    INSERT INTO chat_event_readers (tenant_id, user_id, xid, event_id)
    SELECT $1::text, reader, xact.xid, ids.id
    FROM input JOIN ids USING (n), xact, unnest(input.users) AS reader
), carriers AS (
    INSERT INTO outbox (message_id, destination, routing_key, payload, headers, xid)
    SELECT gen_random_uuid(), $3::text, $4::text,
           jsonb_build_object('id', ids.id, 'xid', xact.xid, 'tenant', $1::text,
                              'type', input.kind, 'to', b.batch -> 'to', 'data', input.data),
           jsonb_build_object('BCC', b.batch -> 'BCC'),
           xact.xid
    FROM input JOIN ids USING (n), xact,
         jsonb_array_elements(input.batches) WITH ORDINALITY AS b(batch, k)
    ORDER BY ids.id, b.k
), wake AS (
    SELECT pg_notify($5::text, '')
)
SELECT array_agg(ids.id ORDER BY ids.id) FROM ids, wake
"""


async def record_all(
    db: AsyncSession | AsyncConnection,
    *,
    tenant: str,
    events: Sequence[Event],
    fanout_batch: int = 250,
) -> list[int]:
    """Write `events` (of users of `tenant`), in this order, and the outbox rows that carry them
    live, in the transaction of `db`: one statement. Returns their ids (ascending)."""
    if not events:
        return []
    rows = []
    for n, event in enumerate(events):
        users = list(dict.fromkeys(event.audience))  # once each, in order
        rows.append(
            {
                "n": n,
                "kind": event.kind,
                "conversation_id": event.conversation_id,
                "message_id": event.message_id,
                "audience": None if event.kind == MESSAGE_CREATED else users,
                "data": event.data,
                "users": users,
                "batches": [
                    {"to": batch, "BCC": [user_route(tenant, user) for user in batch]}
                    for batch in _batches(users, fanout_batch)
                ],
            }
        )
    conn = db if isinstance(db, AsyncConnection) else await db.connection()
    result = await conn.exec_driver_sql(
        _RECORD_SQL,
        (tenant, msgspec.json.encode(rows).decode(), EVENTS, ROUTING_KEY, NOTIFY_CHANNEL),
    )
    ids: list[int] = result.scalar_one()
    return ids


async def record(
    db: AsyncSession | AsyncConnection,
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
    (event_id,) = await record_all(
        db,
        tenant=tenant,
        events=[Event(kind, data, audience, conversation_id, message_id)],
        fanout_batch=fanout_batch,
    )
    return event_id


class Move(NamedTuple):
    """A copy that moved: the message's sender is told."""

    message_id: uuid.UUID
    conversation_id: uuid.UUID
    sender_id: str
    recipient_id: str


def status_events(status: str, moves: Iterable[Move], at: datetime | None = None) -> list[Event]:
    """The `message.status` events of copies that moved to `status`: one per sender and
    conversation, listing the copies (`{messageId, userId}`)."""
    grouped: dict[tuple[str, uuid.UUID], list[dict[str, str]]] = defaultdict(list)
    for move in moves:
        grouped[(move.sender_id, move.conversation_id)].append(
            {"messageId": str(move.message_id), "userId": move.recipient_id}
        )
    when = (at or datetime.now(UTC)).isoformat()
    return [
        Event(
            MESSAGE_STATUS,
            {
                "conversationId": str(conversation_id),
                "status": status,
                "at": when,
                "copies": copies,
            },
            [sender],
            conversation_id,
        )
        for (sender, conversation_id), copies in grouped.items()
    ]


async def record_statuses(
    db: AsyncSession | AsyncConnection,
    *,
    tenant: str,
    status: str,
    moves: Iterable[Move],
    at: datetime | None = None,
    fanout_batch: int = 250,
) -> None:
    """`message.status` events for copies that moved to `status` (`status_events`), in one
    statement."""
    await record_all(
        db, tenant=tenant, events=status_events(status, moves, at), fanout_batch=fanout_batch
    )
