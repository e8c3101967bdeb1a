"""The token-authenticated email HTTP API (`../shared/contracts/email-api.openapi.json`).

`POST /auth/token` gives a bearer token valid `expires_in` seconds; `POST /send-email` sends.
The token is refreshed before it expires and once more on a 401, one refresh at a time per
process, and never appears in a log line or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import httpx
from prometheus_client import Counter
from pydantic import BaseModel, Field, SecretStr

from relaybox.consumer.providers.base import OutgoingEmail, ProviderError, RetryableError
from relaybox.consumer.providers.http import accepted, body_json, error_text, provider_id, refusal

log = logging.getLogger(__name__)
DEFAULT_TOKEN_TTL_S = 1800.0
"""The contract's token lifetime, assumed when a token answer does not say (`expires_in`)."""
TOKEN_REFRESHES = Counter("relaybox_email_api_token_refreshes_total", "Email API tokens fetched")
TOKEN_REFRESH_FAILURES = Counter(
    "relaybox_email_api_token_refresh_failures_total",
    "Email API token requests that got no token",
    ("reason",),  # timeout, unreachable, refused
)


class EmailApiSettings(BaseModel):
    """Where the email API is, its credentials and its (global) rate limit."""

    base_url: str = "http://127.0.0.1:4000/email-api"
    username: str = "relaybox"
    password: SecretStr = SecretStr("dev-email-api-password")
    password_file: Path | None = Field(
        default=None, description="read the password from this file (a mounted secret) instead"
    )
    timeout_s: float = Field(default=10.0, gt=0)
    refresh_margin_s: float = Field(
        default=60.0, ge=0, description="refresh the token this long before it expires"
    )
    rate_per_second: float = Field(
        default=0.1, gt=0, description="across every consumer replica (contract: 1 per 10 s)"
    )
    rate_safety: float = Field(
        default=0.03,
        ge=0,
        le=1,
        description="fraction added to the interval: over a window of W seconds the replicas' "
        "requests may then arrive up to safety * W late (0.03: 30 ms per second) and still fit",
    )

    def secret(self) -> str:
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return self.password.get_secret_value()


def _token_answer(response: httpx.Response) -> tuple[str, float]:
    """The bearer token and its lifetime from a 2xx token answer (contract: any JSON)."""
    data = body_json(response)
    token = data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise RetryableError("email API token answer has no access_token")
    expires_in = data.get("expires_in") if isinstance(data, dict) else None
    try:
        ttl = float(expires_in) if expires_in is not None else DEFAULT_TOKEN_TTL_S
    except (TypeError, ValueError):
        ttl = DEFAULT_TOKEN_TTL_S
    if not ttl > 0 or ttl == float("inf"):
        ttl = DEFAULT_TOKEN_TTL_S
    return token.strip(), ttl


class TokenSource:
    """A cached bearer token; concurrent callers share one refresh."""

    def __init__(self, client: httpx.AsyncClient, settings: EmailApiSettings) -> None:
        self._client = client
        self._settings = settings
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.refreshes = 0

    def _fresh(self) -> bool:
        margin = self._settings.refresh_margin_s
        return self._token is not None and time.monotonic() < self._expires_at - margin

    async def get(self) -> str:
        if self._fresh():
            assert self._token is not None
            return self._token
        async with self._lock:
            if not self._fresh():  # another task may have refreshed while we waited
                await self._refresh()
            assert self._token is not None
            return self._token

    async def invalidate(self, token: str) -> None:
        """Forget `token` (the API refused it) unless a newer one already replaced it."""
        async with self._lock:
            if self._token == token:
                self._token = None

    async def _refresh(self) -> None:
        credentials = {"username": self._settings.username, "password": self._settings.secret()}
        try:
            response = await self._client.post("/auth/token", json=credentials)
        except httpx.TimeoutException:
            TOKEN_REFRESH_FAILURES.labels("timeout").inc()
            raise RetryableError("email API token request timed out") from None
        except httpx.TransportError as exc:
            TOKEN_REFRESH_FAILURES.labels("unreachable").inc()
            raise RetryableError(f"email API unreachable: {type(exc).__name__}") from None
        if not accepted(response):
            # Wrong credentials are an operator problem: retry (then DLQ), never fail for good.
            TOKEN_REFRESH_FAILURES.labels("refused").inc()
            detail = error_text(response, "detail")
            raise RetryableError(f"email API refused the token request: {detail}")
        self._token, ttl = _token_answer(response)
        self._expires_at = time.monotonic() + ttl
        self.refreshes += 1
        TOKEN_REFRESHES.inc()
        log.info("email API token refreshed", extra={"expires_in": ttl})


class EmailApiProvider:
    """Sends each email with one `POST /send-email`."""

    name = "http-api"

    def __init__(self, settings: EmailApiSettings) -> None:
        self._client = httpx.AsyncClient(base_url=settings.base_url, timeout=settings.timeout_s)
        self.tokens = TokenSource(self._client, settings)

    async def prepare(self) -> None:
        """A token valid for the send (fetched now, not after a rate-limit slot has begun).
        A failure here surfaces again, classified, from `send`."""
        with contextlib.suppress(ProviderError):
            await self.tokens.get()

    async def send(self, email: OutgoingEmail) -> str | None:
        body = {"to": email.to, "subject": email.subject, "body": email.text or email.html or ""}
        token = await self.tokens.get()
        response = await self._post(body, token, email.id)
        if response.status_code == 401:  # expired early or revoked: one refresh, one more try
            await self.tokens.invalidate(token)
            response = await self._post(body, await self.tokens.get(), email.id)
        if accepted(response):  # whatever the body: the id when it has one
            return provider_id(response, "message_id", "id")
        if response.status_code == 401:  # refused twice: the credentials, not the email
            raise RetryableError(error_text(response, "detail"))
        raise refusal(response, "detail")

    async def _post(self, body: dict[str, str], token: str, key: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
        try:
            return await self._client.post("/send-email", json=body, headers=headers)
        except httpx.TimeoutException:
            raise RetryableError("email API timed out") from None
        except httpx.TransportError as exc:
            raise RetryableError(f"email API unreachable: {type(exc).__name__}") from None

    async def close(self) -> None:
        await self._client.aclose()
