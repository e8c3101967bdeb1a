"""A recipient's copy of a chat message: its delivery states and the forward-only moves between
them, and the outbox message that asks the consumer to push a batch of copies.

- PENDING: written with the message, not yet handed to the push provider.
- SENT: relaybox handed it on — the push provider accepted it for at least one of the
  recipient's devices, a device has a live realtime socket (which delivers it), or the
  recipient has no device (it waits for a client to fetch it).
- DELIVERED: a device confirmed receipt (a signed push receipt or a realtime socket's ack) or
  the recipient's client fetched the message.
- READ: the recipient read it or a later message of the conversation.
- FAILED: every device failed permanently or the attempts ran out, or pushes were accepted but
  no device confirmed receipt within the receipt deadline (`last_error` says which).

Moves only go forward: PENDING → SENT → DELIVERED → READ, and PENDING → FAILED. The receipt
deadline is the one way from SENT to FAILED (`UNCONFIRMED_FROM`): an accepted push is not a
delivered one (a gateway may lose it), so a copy that no device confirmed in time is reported
FAILED rather than left SENT forever. A delivery or read proven after FAILED still counts (the
recipient does have the message): FAILED → DELIVERED | READ. Nothing ever moves back, so a late
or duplicate event changes nothing.
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

UNCONFIRMED_FROM = RecipientStatus.SENT
"""The status a copy is in when its receipt deadline passes with no device's confirmation
(then FAILED); only the receipt deadline takes this move."""


def statuses_before(target: RecipientStatus) -> list[str]:
    """The statuses a copy may move to `target` from, as their text (a SQL statement's array
    parameter)."""
    return [s.value for s in MOVES_TO[target]]


def may_become(status: Any, target: RecipientStatus) -> ColumnElement[bool]:
    """The SQL condition "a copy whose status is `status` may move to `target`"."""
    return status.in_(statuses_before(target))  # type: ignore[no-any-return]


def deliver_payload(
    message_id: str,
    recipients: list[str],
    *,
    confirm: bool = False,
    devices: list[str] | None = None,
) -> dict[str, Any]:
    """The `chat.deliver` outbox payload: push `message_id` to these recipients' devices; with
    `confirm`, the receipt deadline of their accepted pushes instead (due after the delay).

    A device with a live socket (a fresh `chat_presence` row) is not pushed: the socket delivers
    and its ack records DELIVERED. With `devices`, only those devices of the recipients are
    pushed, live or not — the socket check: a round that left devices to their live sockets
    writes this payload, due `RELAYBOX_CHAT__SOCKET_ACK_TIMEOUT_S` later, and a copy not acked
    (nor fetched, nor read) by then is pushed to them after all; each device is still pushed a
    message at most once."""
    payload: dict[str, Any] = {"messageId": message_id, "recipients": recipients}
    if confirm:
        payload["confirm"] = True
    if devices is not None:
        payload["devices"] = devices
    return payload
