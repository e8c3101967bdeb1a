"""`email.send`: deliver one queued email through the configured email provider."""

from __future__ import annotations

from typing import Any

import asyncpg
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

    async def send(self, row: dict[str, Any], payload: dict[str, Any]) -> str | None:
        text_body, html_body = row["text_body"], row["html_body"]
        if TOKEN_PLACEHOLDER in f"{text_body}{html_body}":
            # A mailing's per-recipient token travels only in the message.
            offered = payload.get("token")
            token = await self._current_token(
                row["id"], offered if isinstance(offered, str) else None
            )
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

    async def _current_token(self, email_id: Any, offered: str | None) -> str | None:
        """The token to send: the message's own when the recipient's stored hash is still its
        hash, else a new one whose hash replaces it. None when the email is not a mailing's
        (then there is nothing to render).

        A message can carry a stale token: the sweeper re-enqueues a row whose lease ran out
        without its token (only the hash is stored), the copy issues a new one, and the original
        message, still retrying, arrives later. Sending its token would mail one that no longer
        verifies. One statement checks and, if needed, replaces the hash.
        """
        fresh = new_token()
        offered_hash = token_hash(offered) if offered is not None else None

        async def swap(conn: asyncpg.Connection) -> bool | None:
            kept: bool | None = await conn.fetchval(
                _KEEP_OR_REPLACE_HASH, email_id, offered_hash, token_hash(fresh)
            )
            return kept

        kept = await self.in_statement(swap)
        if kept is None:
            return None
        return offered if kept else fresh


# Keep the stored hash when it is the offered token's, else store the new one; answers which.
_KEEP_OR_REPLACE_HASH = """
UPDATE mailing_recipients
SET token_hash = CASE WHEN token_hash = $2::text THEN token_hash ELSE $3::text END
WHERE email_id = $1::uuid
RETURNING (token_hash = $2::text) IS TRUE AS kept
"""
