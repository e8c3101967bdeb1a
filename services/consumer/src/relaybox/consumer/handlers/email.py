"""`email.send`: deliver one queued email through the configured email provider."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.mailings.rules import TOKEN_PLACEHOLDER
from relaybox.common.messaging.topology import EMAIL_SEND, Topology
from relaybox.consumer.delivery import DeliveryTable
from relaybox.consumer.mailings.dispatcher import new_token, token_hash
from relaybox.consumer.providers.base import EmailProvider, OutgoingEmail
from relaybox.consumer.ratelimit import RateLimiter
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

    async def prepare(self) -> None:
        await self.provider.prepare()

    def dead_letter_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in payload.items() if k != "token"}

    async def send(self, row: dict[str, Any], payload: dict[str, Any]) -> str | None:
        text_body, html_body = row["text_body"], row["html_body"]
        # A mailing's per-recipient token travels only in the message.
        token = payload.get("token") if isinstance(payload.get("token"), str) else None
        if token is None and TOKEN_PLACEHOLDER in f"{text_body}{html_body}":
            token = await self._reissue_token(row["id"])
        if token is not None:
            text_body = text_body and text_body.replace(TOKEN_PLACEHOLDER, token)
            html_body = html_body and html_body.replace(TOKEN_PLACEHOLDER, token)
        email = OutgoingEmail(
            id=str(row["id"]),
            to=row["to_address"],
            from_=row["from_address"],
            subject=row["subject"],
            text=text_body,
            html=html_body,
        )
        return await self.provider.send(email)

    async def _reissue_token(self, email_id: Any) -> str | None:
        """A mailing email re-enqueued without its token (by the sweeper): issue a new one.

        Only the hash is stored, so the lost token cannot be recovered; the recipient gets a new
        one and the stored hash follows it. Not a mailing email: nothing to render.
        """
        token = new_token()
        updated = await self.in_tx(
            lambda c: c.execute(
                text("UPDATE mailing_recipients SET token_hash = :h WHERE email_id = :id"),
                {"h": token_hash(token), "id": email_id},
            )
        )
        return token if updated.rowcount else None
