"""Webhook endpoints of the Meta-like provider: public, authenticated by their signature."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.enums import MediaType
from litestar.params import HeaderParameter, QueryParameter

from relaybox.api.settings import ApiSettings
from relaybox.api.webhooks import service
from relaybox.api.webhooks.schemas import WebhookAck
from relaybox.common.signing import SIGNATURE_HEADER


class MetaWebhookController(Controller):
    """POST events and the GET subscription handshake at /webhooks/mock-meta (no bearer token)."""

    path = "/webhooks/mock-meta"
    tags = ["webhooks"]
    opt = {"public": True}

    @post(
        "/",
        status_code=200,
        summary="Receive an inbound message or a delivery-status event",
        description='Body: `{eventId, type?: "message", channel, from, text, timestamp}` or '
        '`{eventId, type: "status", channel, providerMessageId, status: "sent"|"delivered"|'
        '"read", timestamp}`; `timestamp` is ISO 8601 or Unix seconds. Signed with '
        "`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`. Idempotent by "
        "`eventId`.",
    )
    async def receive(
        self,
        request: Request[Any, Any, State],
        webhook_intake: NamedDependency[service.WebhookIntake],
        signature: Annotated[
            str | None, HeaderParameter(name=SIGNATURE_HEADER, required=False)
        ] = None,
    ) -> WebhookAck:
        return await webhook_intake.receive(await request.body(), signature)

    @get(
        "/",
        media_type=MediaType.TEXT,
        summary="Subscription handshake: echoes hub.challenge when hub.verify_token matches",
    )
    async def verify(
        self,
        settings: NamedDependency[ApiSettings],
        mode: Annotated[str | None, QueryParameter(name="hub.mode", max_length=64)] = None,
        token: Annotated[
            str | None, QueryParameter(name="hub.verify_token", max_length=1024)
        ] = None,
        challenge: Annotated[
            str | None, QueryParameter(name="hub.challenge", max_length=1024)
        ] = None,
    ) -> str:
        return service.handshake(settings.meta, mode, token, challenge)
