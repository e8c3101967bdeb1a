"""The Meta-like messaging API (WhatsApp / Instagram): POST /messages → providerMessageId."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from pydantic import BaseModel, Field

from relaybox.consumer.providers.base import RetryableError
from relaybox.consumer.providers.http import (
    accepted,
    body_json,
    provider_id,
    refusal,
    usable_id,
)


class MetaProviderSettings(BaseModel):
    """Where the Meta-like API is and how fast relaybox may call it (globally)."""

    base_url: str = "http://127.0.0.1:4000"
    timeout_s: float = Field(default=10.0, gt=0)
    rate_per_second: float = Field(default=80.0, gt=0, description="across every consumer replica")


@dataclass(frozen=True)
class OutgoingChat:
    """A chat message; `id` is the idempotency key sent as clientMessageId."""

    id: str
    channel: str
    to: str
    text: str


def _cloud_api_id(response: httpx.Response) -> str | None:
    """The id in the WhatsApp Cloud API's shape: `{"messages": [{"id": "wamid..."}]}`."""
    data = body_json(response)
    messages = data.get("messages") if isinstance(data, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        return usable_id(messages[0].get("id"))
    return None


class MetaProvider:
    """One pooled HTTP client per process."""

    name = "meta"

    def __init__(self, settings: MetaProviderSettings) -> None:
        self._client = httpx.AsyncClient(base_url=settings.base_url, timeout=settings.timeout_s)

    async def send(self, chat: OutgoingChat) -> str | None:
        body = {
            "channel": chat.channel,
            "to": chat.to,
            "text": chat.text,
            "clientMessageId": chat.id,
        }
        try:
            response = await self._client.post("/messages", json=body)
        except httpx.TimeoutException:
            raise RetryableError("Meta API timed out") from None
        except httpx.TransportError as exc:
            raise RetryableError(f"Meta API unreachable: {type(exc).__name__}") from None
        if accepted(response):  # whatever the body: the id when it has one
            found = provider_id(response, "providerMessageId", "message_id", "id")
            return found or _cloud_api_id(response)
        raise refusal(response, "error", "detail", "message")

    async def close(self) -> None:
        await self._client.aclose()
