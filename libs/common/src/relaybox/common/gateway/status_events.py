"""Meta-like delivery-status events: recording their effect, forward only, whichever of the
webhook and the consumer comes first.

A status webhook (`sent`, `delivered`, `read`) is recorded in `webhook_events` first. It can win
the race against the consumer, which records `SENT` and the `provider_message_id` just after the
provider answered; such an event stays pending (`applied_at IS NULL`) until a message with that
`provider_message_id` exists. Both sides call `apply_status_events` in their transaction: the API
right after inserting the event, the consumer right after recording the `provider_message_id`.

Why nothing is lost: the function takes a transaction-level advisory lock named after the
`provider_message_id` before it reads, and every statement after it takes a fresh snapshot (READ
COMMITTED, the default). Whichever of the two transactions gets the lock second therefore sees
what the first committed: the webhook finds the message, or the consumer finds the event.

Lock order: the message row (if it is visible with that id), then the advisory lock. The consumer
holds the row from its own UPDATE when it calls in, so the two sides never wait for each other in
opposite orders in the normal flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from relaybox.common.gateway.timestamps import parse_provider_timestamp

PROVIDER = "mock-meta"
"""`webhook_events.provider` of the Meta-like provider."""

STATUS_KIND = "status"
MESSAGE_KIND = "message"

WEBHOOK_STATUSES = {"sent": "SENT", "delivered": "DELIVERED", "read": "READ"}
"""A status webhook's `status` → the message status it moves to."""

RANK = {"PENDING": 1, "SENDING": 1, "SENT": 2, "DELIVERED": 3, "READ": 4}
"""Forward-only order of outbound statuses; FAILED (and RECEIVED) are absent: never moved."""

_STAGE_COLUMN = {"SENT": "sent_at", "DELIVERED": "delivered_at", "READ": "read_at"}
_RANK_SQL = (
    "CASE status "
    + " ".join(f"WHEN '{status}' THEN {rank}" for status, rank in RANK.items())
    + " ELSE NULL END"  # NULL < n is not true: FAILED and RECEIVED never move
)


def status_lock_key(provider_message_id: str) -> str:
    """The text whose `hashtextextended` names the advisory lock of one provider message id."""
    return f"relaybox.meta-status\x1f{provider_message_id}"


@dataclass(frozen=True)
class _Pending:
    status: str
    at: datetime


def _event_time(payload: Any, received_at: datetime) -> datetime:
    """The provider's timestamp of a stored event (validated on the way in); else its arrival."""
    try:
        return parse_provider_timestamp(payload.get("timestamp"))
    except (AttributeError, ValueError):
        return received_at


def _stage_times(events: list[_Pending]) -> dict[str, datetime]:
    """For each stage, the earliest event that reached it (a `read` implies `delivered`, ...)."""
    times: dict[str, datetime] = {}
    for stage, column in _STAGE_COLUMN.items():
        reached = [e.at for e in events if RANK[e.status] >= RANK[stage]]
        if reached:
            times[column] = min(reached)
    return times


async def apply_status_events(
    conn_or_session: AsyncSession | AsyncConnection, provider_message_id: str
) -> str | None:
    """Apply every pending status event of `provider_message_id` to its outbound message.

    Runs in the caller's transaction (READ COMMITTED) and never commits. Returns None when no
    outbound message carries `provider_message_id` yet (the events stay pending); otherwise
    marks those events applied and returns the message's status afterwards. The status only
    moves forward (SENT < DELIVERED < READ; PENDING/SENDING below SENT; FAILED never moves), and
    `sent_at`/`delivered_at`/`read_at` are filled from the provider's timestamps where empty.
    """
    db = conn_or_session
    message = await _lock_message(db, provider_message_id)
    await db.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": status_lock_key(provider_message_id)},
    )
    if message is None:  # look again: a consumer may have committed while we waited
        message = await _lock_message(db, provider_message_id)
    if message is None:
        return None
    rows = (
        await db.execute(
            text(
                "SELECT id, status, payload, received_at FROM webhook_events "
                "WHERE provider = :provider AND kind = :kind "
                "AND provider_message_id = :p AND applied_at IS NULL"
            ),
            {"provider": PROVIDER, "kind": STATUS_KIND, "p": provider_message_id},
        )
    ).all()
    events = [
        _Pending(r.status, _event_time(r.payload, r.received_at)) for r in rows if r.status in RANK
    ]
    status: str = message.status
    if events:
        status = await _move_forward(db, message.id, status, events)
    if rows:
        await db.execute(
            text("UPDATE webhook_events SET applied_at = now() WHERE id = ANY(:ids)"),
            {"ids": [r.id for r in rows]},
        )
    return status


async def _lock_message(db: AsyncSession | AsyncConnection, provider_message_id: str) -> Any:
    """The outbound message carrying `provider_message_id` (id, status), row-locked; or None."""
    return (
        await db.execute(
            text(
                "SELECT id, status FROM messages "
                "WHERE provider_message_id = :p AND direction = 'outbound' FOR UPDATE"
            ),
            {"p": provider_message_id},
        )
    ).one_or_none()


async def _move_forward(
    db: AsyncSession | AsyncConnection, message_id: Any, current: str, events: list[_Pending]
) -> str:
    """One guarded UPDATE to the highest status among `events`, if that is a step forward."""
    target = max((e.status for e in events), key=RANK.__getitem__)
    if current not in RANK or RANK[current] >= RANK[target]:
        return current
    times = _stage_times(events)
    assignments = "".join(f", {col} = COALESCE({col}, :{col})" for col in times)
    moved = await db.scalar(
        text(
            f"UPDATE messages SET status = :target, updated_at = now(){assignments} "  # noqa: S608
            f"WHERE id = :id AND ({_RANK_SQL}) < :rank RETURNING status"
        ),
        {"target": target, "rank": RANK[target], "id": message_id, **times},
    )
    return str(moved) if moved is not None else current
