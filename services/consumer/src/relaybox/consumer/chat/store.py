"""The SQL of chat delivery: one query loads a batch, a few set-based statements record a round.

Whatever the batch size, a round costs the same handful of statements: the pushes inserted from
arrays, the dead devices deleted, and each status move one UPDATE over every copy it applies to
(guarded by `may_become`, so a late or repeated round never moves a copy back), which returns the
copies it moved: their senders are told (`message.status`) in the same transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg
from sqlalchemy import String, Text, and_, any_, bindparam, case, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from relaybox.common.chat.delivery import (
    UNCONFIRMED_FROM,
    RecipientStatus,
    may_become,
    statuses_before,
)
from relaybox.common.db.models import ChatMessage, ChatRecipient
from relaybox.consumer.chat.verdict import Copy, Device, Outcome

OPEN = [RecipientStatus.PENDING.value, RecipientStatus.SENT.value]
"""The copies a round still works on."""
PASSED_SENT = [RecipientStatus.DELIVERED.value, RecipientStatus.READ.value]
"""Statuses past SENT (a copy there was sent too)."""

# The message, and each asked-for copy still open with its devices, this message's pushes (a
# device removed since keeps its push row: FULL JOIN) and whether the device has a live socket
# (a `chat_presence` row seen within the presence TTL). One round trip for the whole batch.
_LOAD = """
SELECT m.tenant_id, m.conversation_id::text AS conversation_id, m.sender_id, m.seq, m.text,
       c.title, r.user_id, r.status,
       x.device_id::text AS device_id, x.push_token, x.push_status, x.push_error, x.live
FROM chat_messages AS m
JOIN chat_conversations AS c ON c.id = m.conversation_id
JOIN chat_recipients AS r
  ON r.message_id = m.id AND r.user_id = ANY($2::text[]) AND r.status = ANY($3::text[])
LEFT JOIN LATERAL (
    SELECT coalesce(d.id, p.device_id) AS device_id, d.push_token,
           p.status AS push_status, p.last_error AS push_error,
           EXISTS (SELECT 1 FROM chat_presence AS s
                   WHERE s.device_id = d.id
                     AND s.seen_at > now() - make_interval(secs => $4::float8)) AS live
    FROM (SELECT id, push_token FROM chat_devices
          WHERE tenant_id = m.tenant_id AND user_id = r.user_id) AS d
    FULL JOIN (SELECT device_id, status, last_error FROM chat_pushes
               WHERE message_id = m.id AND user_id = r.user_id) AS p
      ON p.device_id = d.id
) AS x ON true
WHERE m.id = $1::uuid
ORDER BY r.user_id, x.device_id
"""
# Accepted wins over a failure recorded by a concurrent round; nothing else is overwritten.
_INSERT_PUSHES = """
INSERT INTO chat_pushes AS p (message_id, device_id, user_id, status, provider_message_id,
                              last_error)
SELECT $1::uuid, t.device_id, t.user_id, t.status, left(t.provider_id, 255), t.error
FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[])
     AS t(device_id, user_id, status, provider_id, error)
ON CONFLICT (message_id, device_id) DO UPDATE
SET status = EXCLUDED.status, provider_message_id = EXCLUDED.provider_message_id,
    last_error = NULL
WHERE p.status = 'FAILED' AND EXCLUDED.status = 'ACCEPTED'
"""
# Only while the device still has the token that was refused (it may have re-registered).
_DELETE_DEVICES = """
DELETE FROM chat_devices AS d
USING unnest($1::uuid[], $2::text[]) AS t(id, token)
WHERE d.id = t.id AND d.push_token = t.token
"""


@dataclass(frozen=True)
class Message:
    """What a push of the message carries."""

    id: uuid.UUID
    tenant_id: str
    conversation_id: str
    sender_id: str
    seq: int
    text: str | None
    title: str | None


async def load(
    conn: asyncpg.Connection, message_id: uuid.UUID, users: list[str], presence_ttl_s: float
) -> tuple[Message | None, list[Copy]]:
    """The message and the copies of `users` still PENDING or SENT (None, [] when none is)."""
    rows = await conn.fetch(_LOAD, message_id, users, OPEN, presence_ttl_s)
    if not rows:
        return None, []
    first = rows[0]
    message = Message(
        message_id,
        first["tenant_id"],
        first["conversation_id"],
        first["sender_id"],
        first["seq"],
        first["text"],
        first["title"],
    )
    copies: dict[str, Copy] = {}
    for row in rows:
        copy = copies.setdefault(row["user_id"], Copy(row["user_id"], row["status"]))
        if row["device_id"] is not None:
            copy.devices.append(
                Device(
                    row["device_id"],
                    row["push_token"],
                    row["push_status"],
                    row["push_error"],
                    live=bool(row["live"]),
                )
            )
    return message, list(copies.values())


async def insert_pushes(
    conn: AsyncConnection, message_id: uuid.UUID, pushes: list[Outcome]
) -> None:
    """The pushes' final outcomes, one row per device (a device is pushed a message once)."""
    if not pushes:
        return
    args = (
        message_id,
        [uuid.UUID(o.device_id) for o in pushes],
        [o.user_id for o in pushes],
        [o.status for o in pushes],
        [o.provider_id for o in pushes],
        [o.error for o in pushes],
    )
    await conn.exec_driver_sql(_INSERT_PUSHES, args)


async def delete_devices(conn: AsyncConnection, dead: list[Outcome]) -> None:
    """Remove the devices whose token the gateway declared dead."""
    if dead:
        args = ([uuid.UUID(o.device_id) for o in dead], [o.token for o in dead])
        await conn.exec_driver_sql(_DELETE_DEVICES, args)


def _by_user(values: dict[str, Any], column: str) -> Any:
    """`values` as a table (user_id, `column`) to join a set-based UPDATE with."""
    users = bindparam("users", list(values), type_=ARRAY(Text))
    texts = bindparam("values", list(values.values()), type_=ARRAY(Text))
    return select(func.unnest(users).label("user_id"), func.unnest(texts).label(column)).subquery()


async def count_tries(
    conn: AsyncConnection, message_id: uuid.UUID, tried: dict[str, str | None]
) -> None:
    """One more attempt for each copy pushed this round; a PENDING copy keeps the round's
    retryable error as its last error."""
    if not tried:
        return
    t = _by_user(tried, "error")
    keeps_error = and_(t.c.error.is_not(None), ChatRecipient.status == RecipientStatus.PENDING)
    await conn.execute(
        update(ChatRecipient)
        .where(ChatRecipient.message_id == message_id, ChatRecipient.user_id == t.c.user_id)
        .values(
            attempts=ChatRecipient.attempts + 1,
            last_error=case((keeps_error, t.c.error), else_=ChatRecipient.last_error),
        )
    )


# These copies → SENT (forward only: `may_become`'s statuses, $3), sent_at now; a copy a receipt
# already moved on keeps its status and gets its sent_at, no later than its delivered_at
# (`least` skips a NULL). SET's right-hand sides read the row as it was.
_MARK_SENT = """
UPDATE chat_recipients AS r
SET status = CASE WHEN r.status = ANY($3::text[]) THEN $4::text ELSE r.status END,
    sent_at = coalesce(r.sent_at, least(now(), r.delivered_at)),
    last_error = CASE WHEN r.status = ANY($3::text[]) THEN NULL ELSE r.last_error END
WHERE r.message_id = $1::uuid AND r.user_id = ANY($2::text[])
  AND (r.status = ANY($3::text[]) OR (r.sent_at IS NULL AND r.status = ANY($5::text[])))
RETURNING r.user_id, r.status
"""
_TO_SENT = statuses_before(RecipientStatus.SENT)


async def mark_sent(conn: AsyncConnection, message_id: uuid.UUID, users: list[str]) -> list[str]:
    """These copies → SENT (forward only), sent_at now; the users whose copy moved. A copy a
    receipt already moved on (it can arrive before the round is recorded) keeps its status and
    gets its sent_at, no later than its delivered_at. One prepared statement (a delivery
    round's hot path)."""
    if not users:
        return []
    sent = RecipientStatus.SENT.value
    result = await conn.exec_driver_sql(
        _MARK_SENT, (message_id, users, _TO_SENT, sent, PASSED_SENT)
    )
    # Only a copy that was PENDING may become SENT: a copy SENT now is one this moved.
    return [user for user, status in map(tuple, result) if status == sent]


class Unconfirmed(NamedTuple):
    """A copy the receipt deadline failed, with what its sender's event needs."""

    user_id: str
    tenant_id: str
    conversation_id: uuid.UUID
    sender_id: str


async def fail_unconfirmed(
    conn: AsyncConnection, message_id: uuid.UUID, users: list[str], reason: str
) -> list[Unconfirmed]:
    """The copies of `users` still SENT → FAILED with `reason` (the receipt deadline); those
    that moved. A copy a receipt, a fetch or a read moved on is left alone."""
    r, m = ChatRecipient, ChatMessage
    result = await conn.execute(
        update(r)
        .where(
            r.message_id == message_id,
            r.user_id == any_(bindparam("users", users, type_=ARRAY(String))),
            r.status == UNCONFIRMED_FROM.value,
            m.id == r.message_id,
        )
        .values(status=RecipientStatus.FAILED.value, failed_at=func.now(), last_error=reason)
        .returning(r.user_id, m.tenant_id, m.conversation_id, m.sender_id)
    )
    return [Unconfirmed(*row) for row in result]


async def mark_failed(
    conn: AsyncConnection, message_id: uuid.UUID, reasons: dict[str, str]
) -> list[str]:
    """These copies → FAILED (forward only), failed_at now, each with its reason; the users
    whose copy moved."""
    if not reasons:
        return []
    t = _by_user(reasons, "reason")
    result = await conn.execute(
        update(ChatRecipient)
        .where(
            ChatRecipient.message_id == message_id,
            ChatRecipient.user_id == t.c.user_id,
            may_become(ChatRecipient.status, RecipientStatus.FAILED),
        )
        .values(status=RecipientStatus.FAILED, failed_at=func.now(), last_error=t.c.reason)
        .returning(ChatRecipient.user_id)
    )
    return [user for (user,) in result]
