"""Webhook endpoints of the Meta-like provider: public, authenticated by their signature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.enums import MediaType
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Parameter, RequestBody, Schema
from litestar.params import HeaderParameter, QueryParameter

from relaybox.api.openapi import (
    PUBLIC,
    READS_BODY,
    PublicOperation,
    model_schema,
    problems,
)
from relaybox.api.settings import ApiSettings
from relaybox.api.webhooks import service
from relaybox.api.webhooks.schemas import InboundMessageEvent, StatusEvent, WebhookAck
from relaybox.common.signing import SIGNATURE_HEADER

SIGNATURE_PATTERN = "^sha256=[0-9a-f]{64}$"


@dataclass
class SignedEventOperation(PublicOperation):
    """POST /webhooks/mock-meta as documented: the event schemas of the raw body the handler
    parses itself (after checking its signature), and the signature header it requires."""

    def __post_init__(self) -> None:
        super().__post_init__()
        events = Schema(one_of=[model_schema(InboundMessageEvent), model_schema(StatusEvent)])
        self.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=events)}, required=True
        )
        for parameter in self.parameters or []:
            if isinstance(parameter, Parameter) and parameter.name == SIGNATURE_HEADER:
                parameter.required = True
                parameter.description = (
                    "sha256=<hex HMAC-SHA256 of the raw body with the webhook secret>; may be "
                    "left out only where RELAYBOX_META__ALLOW_UNSIGNED is set"
                )
                parameter.schema = Schema(type=OpenAPIType.STRING, pattern=SIGNATURE_PATTERN)


class MetaWebhookController(Controller):
    """POST events and the GET subscription handshake at /webhooks/mock-meta (no bearer token)."""

    path = "/webhooks/mock-meta"
    tags = ["webhooks"]
    opt = {PUBLIC: True}

    @post(
        "/",
        status_code=200,
        summary="Receive an inbound message or a delivery-status event",
        description='Body: `{eventId, type?: "message", channel, from, text, timestamp}` or '
        '`{eventId, type: "status", channel, providerMessageId, status: "sent"|"delivered"|'
        '"read", timestamp}`; `timestamp` is ISO 8601 or Unix seconds. Signed with '
        "`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`. Idempotent by "
        "`eventId`.",
        opt={READS_BODY: True},
        responses=problems(401),
        operation_class=SignedEventOperation,
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
        responses=problems(403),
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
