"""Webhook service: signature and handshake checks, and the one-transaction recording of events.

Every event is inserted into `webhook_events` first with `ON CONFLICT (provider, event_id) DO
NOTHING`; an event seen before (even by a concurrent request, which waits for the first one's
transaction) changes nothing else.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from prometheus_client import Counter
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.conversations.service import preview, upsert_sql
from relaybox.api.errors import ApiError
from relaybox.api.settings import MetaGatewaySettings
from relaybox.api.webhooks.schemas import (
    InboundMessageEvent,
    StatusEvent,
    WebhookAck,
    parse_event,
)
from relaybox.common.db.models import WebhookEvent
from relaybox.common.db.session import connection, run_on_driver
from relaybox.common.gateway.status_events import (
    MESSAGE_KIND,
    PROVIDER,
    STATUS_KIND,
    WEBHOOK_STATUSES,
    apply_status_events,
)
from relaybox.common.signing import SIGNATURE_HEADER, verify

WEBHOOK_EVENTS = Counter(
    "relaybox_api_webhook_events_total",
    "Provider webhook events by kind and outcome (processed, duplicate, pending)",
    ("provider", "kind", "outcome"),
)


class InvalidSignatureError(ApiError):
    status_code = 401
    title = "Unauthorized"


class ForbiddenError(ApiError):
    status_code = 403
    title = "Forbidden"


def check_signature(settings: MetaGatewaySettings, body: bytes, header: str | None) -> None:
    """A 401 unless `header` signs the raw `body` (a missing one passes only with
    `allow_unsigned`; with no secret configured, which needs `allow_unsigned`, nothing is
    checked)."""
    secret = settings.webhook_secret
    if secret is None or (header is None and settings.allow_unsigned):
        return
    require_signature(secret, body, header)


def require_signature(secret: str, body: bytes, header: str | None) -> None:
    """A 401 unless `header` signs the raw `body` with `secret`."""
    if header is None:
        raise InvalidSignatureError(
            f"{SIGNATURE_HEADER} is required: sha256=<hex HMAC-SHA256 of the raw body>",
            field=SIGNATURE_HEADER,
        )
    if not verify(secret, body, header):
        raise InvalidSignatureError(
            f"{SIGNATURE_HEADER} does not match the body", field=SIGNATURE_HEADER
        )


def handshake(
    settings: MetaGatewaySettings, mode: str | None, token: str | None, challenge: str | None
) -> str:
    """The challenge to echo when the subscription request carries our verify token; else 403."""
    expected = settings.verify_token.encode()
    if mode != "subscribe" or not hmac.compare_digest((token or "").encode(), expected):
        raise ForbiddenError("hub.mode must be 'subscribe' and hub.verify_token must match")
    if not challenge:
        raise ApiError("hub.challenge is required", field="hub.challenge")
    return challenge


@dataclass(frozen=True)
class WebhookIntake:
    """POST /webhooks/mock-meta as one dependency: the engine it writes through and the
    gateway's settings (one dependency, not two: Litestar resolves two or more in a task group
    per request)."""

    engine: AsyncEngine
    settings: MetaGatewaySettings
    retention: timedelta  # how long events are remembered (the consumers' sweeper purges them)

    async def receive(self, body: bytes, signature: str | None) -> WebhookAck:
        """Check the signature of the raw body, parse it, record the event (see module doc)."""
        check_signature(self.settings, body, signature)
        event, payload = parse_event(body)
        if isinstance(event, StatusEvent):
            ack = await _record_status(self.engine, event, payload)
        elif datetime.now(UTC) - event.timestamp > self.retention:
            # Older than anything still remembered: it may be one processed and purged since.
            ack = WebhookAck(status="expired", event_id=event.event_id)
        else:
            ack = await _record_inbound(self.engine, self.settings.tenant, event, payload)
        WEBHOOK_EVENTS.labels(PROVIDER, event.type, ack.status).inc()
        return ack


# An inbound message is the hot path: ONE statement, hence one round trip and one (implicit)
# transaction, records the event and, only if it is new, upserts the conversation and inserts the
# message. A concurrent request with the same event waits on the first one's unique-index entry
# and then, seeing it committed, inserts nothing; if the first rolled back, the second one writes.
# The conversation upsert is `relaybox.api.conversations.service.upsert_sql`'s rule for an
# inbound message.
INBOUND_SQL = f"""
WITH event AS (
    INSERT INTO webhook_events (provider, event_id, kind, payload, applied_at)
    VALUES ($1::text, $2::text, $3::text, $4::jsonb, now())
    ON CONFLICT (provider, event_id) DO NOTHING
    RETURNING id
), conversation AS (
    {
    upsert_sql(
        row="$5::uuid, $12::text, $6::text, $7::text, $8::timestamptz, $9::text",
        source="FROM event",
        inbound=True,
    )
}
), message AS (
    INSERT INTO messages (id, conversation_id, tenant_id, direction, channel, participant_id,
                          text, status, provider_event_id, sort_at)
    SELECT $10::uuid, conversation.id, $12::text, 'inbound', $6::text, $7::text, $11::text,
           'RECEIVED', $2::text, $8::timestamptz
    FROM conversation
    RETURNING 1
)
SELECT count(*) FROM message
"""  # noqa: S608 - composed of constants of the code


async def _record_inbound(
    engine: AsyncEngine, tenant: str, event: InboundMessageEvent, payload: dict[str, Any]
) -> WebhookAck:
    """The event, the conversation upsert and the RECEIVED message, in one statement, in the
    inbox of `tenant` (the owner of the provider account)."""
    args = (
        PROVIDER,
        event.event_id,
        MESSAGE_KIND,
        msgspec.json.encode(payload).decode(),
        uuid.uuid4(),
        event.channel,
        event.from_,
        event.timestamp,
        preview(event.text),
        uuid.uuid4(),
        event.text,
        tenant,
    )

    async def record(conn: asyncpg.Connection, repeated: bool) -> bool:
        # Safe to repeat: a repeat whose first run committed finds the event and writes nothing.
        written: int = await conn.fetchval(INBOUND_SQL, *args)
        return written == 1

    if await run_on_driver(engine, record):
        return WebhookAck(status="processed", event_id=event.event_id)
    return WebhookAck(status="duplicate", event_id=event.event_id)


async def _record_status(
    engine: AsyncEngine, event: StatusEvent, payload: dict[str, Any]
) -> WebhookAck:
    """The event, then every pending event of its message applied (forward only), if the
    message is known by its provider id yet; otherwise the event waits for the consumer."""
    async with connection(engine) as conn, conn.begin():
        inserted = await conn.scalar(
            pg_insert(WebhookEvent)
            .values(
                provider=PROVIDER,
                event_id=event.event_id,
                kind=STATUS_KIND,
                provider_message_id=event.provider_message_id,
                status=WEBHOOK_STATUSES[event.status],
                payload=payload,
            )
            .on_conflict_do_nothing(index_elements=[WebhookEvent.provider, WebhookEvent.event_id])
            .returning(WebhookEvent.id)
        )
        if inserted is None:
            return WebhookAck(status="duplicate", event_id=event.event_id)
        applied = await apply_status_events(conn, event.provider_message_id)
    return WebhookAck(status="processed" if applied else "pending", event_id=event.event_id)
