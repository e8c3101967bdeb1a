"""A recipient's copy of a chat message: its delivery states and the forward-only moves between
them, and the outbox message that asks the consumer to push a batch of copies.

- PENDING: written with the message, not yet handed to the push provider.
- SENT: relaybox handed it on — the push provider accepted it for at least one of the
  recipient's devices, or the recipient has no device (it waits for a client to fetch it).
- DELIVERED: a device confirmed receipt (a signed push receipt) or the recipient's client
  fetched the message.
- READ: the recipient read it or a later message of the conversation.
- FAILED: every device failed permanently or the attempts ran out (`last_error` says why).

Moves only go forward: PENDING → SENT → DELIVERED → READ, and PENDING → FAILED. A delivery or
read proven after FAILED still counts (the recipient does have the message): FAILED →
DELIVERED | READ. Nothing ever moves back, so a late or duplicate event changes nothing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement


class RecipientStatus(StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    READ = "READ"
    FAILED = "FAILED"


MOVES_TO: dict[RecipientStatus, tuple[RecipientStatus, ...]] = {
    RecipientStatus.SENT: (RecipientStatus.PENDING,),
    RecipientStatus.FAILED: (RecipientStatus.PENDING,),
    RecipientStatus.DELIVERED: (
        RecipientStatus.PENDING,
        RecipientStatus.SENT,
        RecipientStatus.FAILED,
    ),
    RecipientStatus.READ: (
        RecipientStatus.PENDING,
        RecipientStatus.SENT,
        RecipientStatus.DELIVERED,
        RecipientStatus.FAILED,
    ),
}
"""The statuses each status may be reached from."""


def may_become(status: Any, target: RecipientStatus) -> ColumnElement[bool]:
    """The SQL condition "a copy whose status is `status` may move to `target`"."""
    return status.in_([s.value for s in MOVES_TO[target]])  # type: ignore[no-any-return]


def deliver_payload(message_id: str, recipients: list[str]) -> dict[str, Any]:
    """The `chat.deliver` outbox payload: push `message_id` to these recipients' devices."""
    return {"messageId": message_id, "recipients": recipients}
