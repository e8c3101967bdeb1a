"""Webhook service: signature and handshake checks, and the one-transaction recording of events.

Every event is inserted into `webhook_events` first with `ON CONFLICT (provider, event_id) DO
NOTHING`; an event seen before (even by a concurrent request, which waits for the first one's
transaction) changes nothing else.
"""

from __future__ import annotations

import hmac
import uuid
from typing import Any

from prometheus_client import Counter
from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.conversations.service import upsert_conversation
from relaybox.api.errors import ApiError
from relaybox.api.settings import MetaGatewaySettings
from relaybox.api.webhooks.schemas import InboundMessageEvent, StatusEvent, WebhookAck
from relaybox.common.db.models import Message, WebhookEvent
from relaybox.common.meta_status import (
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


async def record_event(
    session: AsyncSession, event: InboundMessageEvent | StatusEvent, payload: dict[str, Any]
) -> WebhookAck:
    if isinstance(event, StatusEvent):
        ack = await _record_status(session, event, payload)
    else:
        ack = await _record_inbound(session, event, payload)
    WEBHOOK_EVENTS.labels(PROVIDER, event.type, ack.status).inc()
    return ack


async def _insert_event(session: AsyncSession, **values: Any) -> bool:
    """True if the event is new (the row was inserted)."""
    inserted = await session.scalar(
        pg_insert(WebhookEvent)
        .values(provider=PROVIDER, **values)
        .on_conflict_do_nothing(index_elements=[WebhookEvent.provider, WebhookEvent.event_id])
        .returning(WebhookEvent.id)
    )
    return inserted is not None


async def _record_inbound(
    session: AsyncSession, event: InboundMessageEvent, payload: dict[str, Any]
) -> WebhookAck:
    """The event, the conversation upsert and the RECEIVED message, in one transaction."""
    async with session.begin():
        if not await _insert_event(
            session,
            event_id=event.event_id,
            kind=MESSAGE_KIND,
            payload=payload,
            applied_at=func.now(),
        ):
            return WebhookAck(status="duplicate", event_id=event.event_id)
        conversation_id = await upsert_conversation(
            session,
            channel=event.channel,
            participant_id=event.from_,
            at=event.timestamp,
            text=event.text,
            inbound=True,
        )
        await session.execute(
            pg_insert(Message).values(
                id=uuid.uuid4(),
                conversation_id=conversation_id,
                direction="inbound",
                channel=event.channel,
                participant_id=event.from_,
                text=event.text,
                status="RECEIVED",
                provider_event_id=event.event_id,
                sort_at=event.timestamp,
            )
        )
    return WebhookAck(status="processed", event_id=event.event_id)


async def _record_status(
    session: AsyncSession, event: StatusEvent, payload: dict[str, Any]
) -> WebhookAck:
    """The event, then every pending event of its message applied (forward only), if the
    message is known by its provider id yet; otherwise the event waits for the consumer."""
    async with session.begin():
        if not await _insert_event(
            session,
            event_id=event.event_id,
            kind=STATUS_KIND,
            provider_message_id=event.provider_message_id,
            status=WEBHOOK_STATUSES[event.status],
            payload=payload,
        ):
            return WebhookAck(status="duplicate", event_id=event.event_id)
        applied = await apply_status_events(session, event.provider_message_id)
    return WebhookAck(status="processed" if applied else "pending", event_id=event.event_id)
