"""`email.send`: deliver one queued email through the configured email provider."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.messaging.topology import EMAIL_SEND, Topology
from relaybox.common.providers.base import EmailProvider, OutgoingEmail
from relaybox.common.ratelimit import RateLimiter
from relaybox.consumer.delivery import DeliveryTable
from relaybox.consumer.sending import SendingHandler
from relaybox.consumer.settings import ConsumerSettings


class EmailHandler(SendingHandler):
    """Sends rows of `emails`; the email id is the provider idempotency key and Message-ID."""

    route = EMAIL_SEND
    table = DeliveryTable("emails")

    def __init__(
        self,
        engine: AsyncEngine,
        topology: Topology,
        settings: ConsumerSettings,
        provider: EmailProvider,
        limiter: RateLimiter | None = None,
    ) -> None:
        super().__init__(engine, topology, settings, limiter)
        self.provider = provider
        self.provider_name = provider.name

    async def send(self, row: dict[str, Any]) -> str:
        email = OutgoingEmail(
            id=str(row["id"]),
            to=row["to_address"],
            from_=row["from_address"],
            subject=row["subject"],
            text=row["text_body"],
            html=row["html_body"],
        )
        return await self.provider.send(email)
