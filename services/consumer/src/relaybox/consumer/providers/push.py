"""The FCM-like push gateway (`docs/messenger/push-gateway.md`): one push to one device.

`POST /push/v1/messages:send` with the server key as a bearer token and `Idempotency-Key:
<message id>:<device id>`. Any 2xx is an accepted push whatever its body (the `name` is read
when the body has one). A dead token (404 `UNREGISTERED`/`NOT_FOUND`, or 400 `INVALID_ARGUMENT`
about the token) is `UnregisteredDeviceError`: permanent, and the device is to be removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from pydantic import BaseModel, Field, SecretStr

from relaybox.common.signing import DEV_PUSH_SERVER_KEY
from relaybox.consumer.providers.base import PermanentError, ProviderError, RetryableError
from relaybox.consumer.providers.http import accepted, body_json, provider_id, refusal

DEAD_TOKEN_CODES = frozenset({"UNREGISTERED"})
"""FCM's `errorCode`s that say the token will never work again."""
MAX_PREVIEW_BYTES = 2048
"""The notification body's text is cut to this many UTF-8 bytes (the payload limit is 4 KB)."""


class PushSettings(BaseModel):
    """Where the push gateway is, its server key and its (global) rate limit."""

    url: str = "http://127.0.0.1:4000/push/v1/messages:send"
    server_key: SecretStr = SecretStr(DEV_PUSH_SERVER_KEY)
    timeout_s: float = Field(default=10.0, gt=0, description="one push call, answer included")
    connect_timeout_s: float = Field(default=3.0, gt=0)
    rate_per_second: float = Field(default=500.0, gt=0, description="across every replica")
    max_in_flight: int = Field(
        default=32, ge=1, le=1000, description="pushes of one batch under way at once"
    )
    max_connections: int = Field(
        default=256, ge=1, description="connections to the gateway kept by one replica"
    )
    receipt_timeout_s: float = Field(
        default=86_400.0,
        gt=0,
        description="a copy whose pushes were accepted but that no device confirmed within this "
        "long is FAILED ('no device confirmed delivery'); a later receipt or fetch still makes "
        "it DELIVERED",
    )


class UnregisteredDeviceError(PermanentError):
    """The device's token is dead (unregistered or invalid): remove the device."""


@dataclass(frozen=True)
class OutgoingPush:
    """One chat message for one device; `key` (`<message id>:<device id>`) is the idempotency
    key."""

    message_id: str
    device_id: str
    token: str
    data: dict[str, str]
    title: str
    body: str

    @property
    def key(self) -> str:
        return f"{self.message_id}:{self.device_id}"


def preview(text: str | None, max_bytes: int = MAX_PREVIEW_BYTES) -> str:
    """`text` cut to `max_bytes` of UTF-8 (never in the middle of a character)."""
    encoded = (text or "").encode()
    if len(encoded) <= max_bytes:
        return text or ""
    return encoded[: max_bytes - 3].decode(errors="ignore") + "…"


def _google_error(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of a Google API error body, or {}."""
    data = body_json(response)
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def _details(error: dict[str, Any]) -> list[dict[str, Any]]:
    details = error.get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _about_the_token(error: dict[str, Any]) -> bool:
    """A 400 INVALID_ARGUMENT that names the token (a field violation on it, or the message:
    FCM says "The registration token is not a valid FCM registration token"). Another invalid
    argument (a payload too large, say) is the message's fault, not the device's."""
    for detail in _details(error):
        for violation in detail.get("fieldViolations") or ():
            if isinstance(violation, dict) and "token" in str(violation.get("field", "")):
                return True
    message = error.get("message")
    return isinstance(message, str) and "token" in message.lower()


def dead_token(response: httpx.Response) -> bool:
    """Whether a refusal says the device's token is dead."""
    error = _google_error(response)
    codes = {d.get("errorCode") for d in _details(error)}
    status = response.status_code
    if status == 404:
        return bool(codes & DEAD_TOKEN_CODES) or error.get("status") == "NOT_FOUND"
    if status == 400 and error.get("status") == "INVALID_ARGUMENT":
        return _about_the_token(error)
    return False


def classify(response: httpx.Response) -> ProviderError:
    """The typed error of a refusal: a dead token, else as every HTTP provider's."""
    error = refusal(response, "error")
    if isinstance(error, PermanentError) and dead_token(response):
        return UnregisteredDeviceError(str(error))
    return error


class PushProvider:
    """One pooled aiohttp session per process, opened on the first push (inside the loop).

    aiohttp rather than httpx, as the other providers use: a fan-out pushes thousands of small
    requests at once, and httpx spends about 1 ms of CPU on each (more as its pool grows) where
    aiohttp spends about 0.13 ms (1,000 pushes to the mock: 1.7 s against 0.17 s). The answer is
    read into an `httpx.Response`, so every provider classifies answers with the same rules
    (`relaybox.consumer.providers.http`).
    """

    name = "push"

    def __init__(self, settings: PushSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            settings = self._settings
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=settings.timeout_s, connect=settings.connect_timeout_s
                ),
                connector=aiohttp.TCPConnector(limit=settings.max_connections),
                headers={"Authorization": f"Bearer {settings.server_key.get_secret_value()}"},
            )
        return self._session

    async def send(self, push: OutgoingPush) -> str | None:
        """Push once; the gateway's message name (None if it gave none). Returns normally
        exactly when the gateway accepted the push."""
        body = {
            "message": {
                "token": push.token,
                "data": push.data,
                "notification": {"title": push.title, "body": push.body},
            }
        }
        try:
            async with self._open().post(
                self._settings.url, json=body, headers={"Idempotency-Key": push.key}
            ) as answer:
                content = await answer.read()
                response = httpx.Response(
                    answer.status, headers=list(answer.headers.items()), content=content
                )
        except TimeoutError:
            raise RetryableError("push gateway timed out") from None
        except aiohttp.ClientError as exc:
            raise RetryableError(f"push gateway unreachable: {type(exc).__name__}") from None
        if accepted(response):  # whatever the body: the name when it has one
            return provider_id(response, "name")
        raise classify(response)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
