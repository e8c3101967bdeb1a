"""The Meta-like messaging API (WhatsApp / Instagram): POST /messages → providerMessageId."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from pydantic import BaseModel, Field

from relaybox.common.providers.base import PermanentError, RateLimitedError, RetryableError

RETRYABLE_STATUS = {429, 500, 502, 503, 504}


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


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form), if any."""
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_text(response: httpx.Response) -> str:
    try:
        detail = response.json().get("error")
    except ValueError:
        detail = None
    return f"HTTP {response.status_code}: {detail or response.reason_phrase}"[:500]


class MetaProvider:
    """One pooled HTTP client per process."""

    name = "meta"

    def __init__(self, settings: MetaProviderSettings) -> None:
        self._client = httpx.AsyncClient(base_url=settings.base_url, timeout=settings.timeout_s)

    async def send(self, chat: OutgoingChat) -> str:
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
        if response.status_code == 429:
            raise RateLimitedError(_error_text(response), retry_after=retry_after(response))
        if response.status_code in RETRYABLE_STATUS:
            raise RetryableError(_error_text(response), retry_after=retry_after(response))
        if response.status_code >= 400:
            raise PermanentError(_error_text(response))
        try:
            return str(response.json()["providerMessageId"])
        except (ValueError, KeyError, TypeError):
            raise RetryableError("Meta API answered without a providerMessageId") from None

    async def close(self) -> None:
        await self._client.aclose()
