"""The outbox writer: called inside the caller's transaction, next to its domain rows."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from opentelemetry import propagate
from sqlalchemy import func, insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from relaybox.common.db.models import Outbox

NOTIFY_CHANNEL = "relaybox_outbox"
WORK = "work"
DEAD = "dead"
EVENTS = "events"  # the realtime replicas' exchange: chat events, routed by BCC


def retry_destination(delay_ms: int) -> str:
    """The outbox destination of a retry tier."""
    return f"retry.{delay_ms}"


def trace_headers(correlation_id: str | None = None) -> dict[str, Any]:
    """The current OpenTelemetry context (traceparent) plus a correlation id, for AMQP headers."""
    carrier: dict[str, Any] = {}
    propagate.inject(carrier)
    if correlation_id:
        carrier["x-correlation-id"] = correlation_id
    return carrier


async def enqueue(
    session: AsyncSession | AsyncConnection,
    *,
    routing_key: str,
    payload: dict[str, Any],
    destination: str = WORK,
    headers: dict[str, Any] | None = None,
    message_id: uuid.UUID | None = None,
    delay: timedelta | None = None,
) -> uuid.UUID:
    """Add one message to the outbox in the session's transaction and wake the publisher.

    The NOTIFY is transactional: PostgreSQL delivers it on commit, never on rollback.
    """
    message_id = message_id or uuid.uuid4()
    values: dict[str, Any] = {
        "message_id": message_id,
        "destination": destination,
        "routing_key": routing_key,
        "payload": payload,
        "headers": headers or {},
    }
    if delay is not None:
        values["available_at"] = func.now() + delay
    await session.execute(insert(Outbox).values(**values))
    await session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
    return message_id
