"""`meta.send`: deliver one outbound WhatsApp/Instagram message through the Meta-like API."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relaybox.common.gateway.status_events import apply_status_events
from relaybox.common.messaging.topology import META_SEND, Topology
from relaybox.consumer.delivery import DeliveryTable
from relaybox.consumer.providers.meta import MetaProvider, OutgoingChat
from relaybox.consumer.ratelimit import RateLimiter
from relaybox.consumer.sending import SendingHandler
from relaybox.consumer.settings import ConsumerSettings

META_LIMIT_KEY = META_SEND  # the global limit of the Meta-like API, named after its route


class MetaHandler(SendingHandler):
    """Sends outbound rows of `messages`; the message id is the provider's clientMessageId."""

    route = META_SEND
    table = DeliveryTable("messages")
    provider_name = "meta"

    def __init__(
        self,
        engine: AsyncEngine,
        topology: Topology,
        settings: ConsumerSettings,
        provider: MetaProvider,
        limiter: RateLimiter | None = None,
    ) -> None:
        super().__init__(engine, topology, settings, limiter)
        self.provider = provider

    async def send(self, row: dict[str, Any], payload: dict[str, Any]) -> str | None:
        chat = OutgoingChat(
            id=str(row["id"]), channel=row["channel"], to=row["participant_id"], text=row["text"]
        )
        return await self.provider.send(chat)

    async def after_sent(self, conn: AsyncConnection, row_id: Any, provider_id: str | None) -> None:
        # Status webhooks can arrive before SENT is recorded; apply the ones that waited.
        if provider_id is not None:
            await apply_status_events(conn, provider_id)
