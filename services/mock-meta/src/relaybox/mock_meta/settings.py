"""Settings of the mock-meta service (HTTP server, SMTP sink, Meta-like provider, email API,
push gateway)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from relaybox.common.settings import HttpServerSettings, ServiceSettings
from relaybox.common.signing import DEV_PUSH_SERVER_KEY, DEV_WEBHOOK_SECRET

DEV_EMAIL_API_USERNAME = "relaybox"
DEV_EMAIL_API_PASSWORD = "dev-email-api-password"  # noqa: S105 - development default only


class SmtpSinkSettings(BaseModel):
    """The in-process SMTP sink that records every message it accepts."""

    host: str = "127.0.0.1"
    port: int = Field(default=1025, ge=0, le=65535, description="0 binds a free port")
    max_messages: int = Field(
        default=10_000, ge=1, description="ring buffer cap: the oldest message is dropped first"
    )


class WebhookDeliverySettings(BaseModel):
    """How a mock posts its signed webhooks (Meta events, push receipts): key and retries."""

    webhook_secret: str = Field(
        default=DEV_WEBHOOK_SECRET,
        min_length=1,
        repr=False,
        description="HMAC-SHA256 key of X-Hub-Signature-256, shared with the gateway",
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_attempts: int = Field(
        default=4, ge=1, le=20, description="tries per webhook delivery (1 = no retry)"
    )
    webhook_backoff_s: float = Field(
        default=0.5, ge=0, description="delay before the first retry, doubled on each next one"
    )


class MetaMockSettings(WebhookDeliverySettings):
    """The Meta-like (WhatsApp / Instagram) provider: its webhook target and initial behaviour."""

    webhook_url: str = Field(
        default="http://127.0.0.1:3000/webhooks/mock-meta",
        pattern=r"^https?://\S+$",
        description="where status and inbound events are posted (changeable via POST /config)",
    )
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    duplicate_rate: float = Field(default=0.0, ge=0, le=1)
    out_of_order_rate: float = Field(default=0.0, ge=0, le=1)
    delay_max_ms: int = Field(
        default=200, ge=0, le=60_000, description="upper bound of each random webhook delay"
    )
    rate_limit_per_second: int = Field(default=0, ge=0, description="0 = unlimited")
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After of simulated 429s")
    seed: int | None = Field(default=None, description="None: a random seed (shown by /config)")
    dedupe: bool = False
    status_events: bool = True
    max_messages: int = Field(
        default=10_000, ge=1, description="sent messages kept; the oldest is dropped first"
    )


class EmailApiMockSettings(BaseModel):
    """The token-authenticated email HTTP API (mounted under /email-api): credentials and limits."""

    username: str = Field(default=DEV_EMAIL_API_USERNAME, min_length=1)
    password: str = Field(
        default=DEV_EMAIL_API_PASSWORD,
        min_length=1,
        repr=False,
        description="the one password POST /auth/token accepts; never logged nor shown",
    )
    token_ttl_s: int = Field(
        default=1800, ge=1, le=86_400, description="lifetime of an issued token (expires_in)"
    )
    rate_limit_per_window: int = Field(
        default=1, ge=0, description="accepted POST /send-email per window; 0 = unlimited"
    )
    rate_window_s: float = Field(
        default=10.0, gt=0, le=3600, description="length of the sliding rate-limit window"
    )
    max_messages: int = Field(
        default=10_000, ge=1, description="accepted emails kept; the oldest is dropped first"
    )


class PushMockSettings(WebhookDeliverySettings):
    """The FCM-like push gateway (mounted under /push): its server key and where receipts go
    (signed and retried as its `WebhookDeliverySettings` say)."""

    server_key: str = Field(
        default=DEV_PUSH_SERVER_KEY,
        min_length=1,
        repr=False,
        description="the one bearer key POST /push/v1/messages:send accepts; never logged",
    )
    project: str = Field(
        default="relaybox-mock", pattern=r"^[a-z0-9-]+$", description="in message names"
    )
    receipt_url: str = Field(
        default="http://127.0.0.1:3000/webhooks/push",
        pattern=r"^https?://\S+$",
        description="where delivery receipts are posted (changeable via POST /push/_mock/config)",
    )
    rate_limit_per_second: int = Field(default=0, ge=0, description="0 = unlimited")
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After of simulated 429/503s")
    seed: int | None = Field(default=None, description="None: a random seed (shown by /config)")
    max_messages: int = Field(
        default=10_000, ge=1, description="push calls kept; the oldest is dropped first"
    )


class MockMetaSettings(ServiceSettings):
    """Everything `python -m relaybox.mock_meta` reads from `RELAYBOX_*` variables."""

    mock_meta: HttpServerSettings = HttpServerSettings(port=4000)
    smtp_sink: SmtpSinkSettings = SmtpSinkSettings()
    meta: MetaMockSettings = MetaMockSettings()
    email_api: EmailApiMockSettings = EmailApiMockSettings()
    push: PushMockSettings = PushMockSettings()
