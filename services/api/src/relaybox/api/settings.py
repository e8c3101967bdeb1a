"""API settings (`RELAYBOX_` prefix)."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator, model_validator

from relaybox.common.auth import PLACEHOLDER_SECRET as PLACEHOLDER_SECRET
from relaybox.common.auth import AuthSettings as AuthSettings
from relaybox.common.mailings.rules import TOKEN_PLACEHOLDER
from relaybox.common.settings import (
    ChatSettings,
    HttpServerSettings,
    ServiceSettings,
    WebhookRetention,
)
from relaybox.common.signing import DEV_WEBHOOK_SECRET


class RateLimitSettings(BaseModel):
    """Per-client limit on sending endpoints."""

    send_per_minute: int = Field(default=600, ge=1)


class TracingSettings(BaseModel):
    """OpenTelemetry in the API."""

    request_spans: bool = Field(
        default=False,
        description="record a server span per request (OpenTelemetry ASGI middleware); without "
        "it the caller's traceparent, or a minted one, still reaches the outbox and the consumer",
    )


# The mock-meta service signs its webhooks with the same development default.
DEV_VERIFY_TOKEN = "dev-mock-meta-verify-token"  # noqa: S105


class MetaGatewaySettings(BaseModel):
    """The Meta-like gateway's webhooks (`/webhooks/mock-meta`)."""

    webhook_secret: str | None = Field(
        default=DEV_WEBHOOK_SECRET,
        description="HMAC-SHA256 key of X-Hub-Signature-256; empty = none (needs allow_unsigned)",
    )
    allow_unsigned: bool = Field(
        default=False, description="accept webhooks without X-Hub-Signature-256 (a bad one never)"
    )
    verify_token: str = Field(
        default=DEV_VERIFY_TOKEN, min_length=1, description="hub.verify_token of the handshake"
    )
    tenant: str = Field(
        default="dev",
        min_length=1,
        max_length=255,
        description="the tenant that owns the gateway's provider account: inbound messages land "
        "in its inbox, and only it (or an admin) sends through the account",
    )

    @field_validator("webhook_secret")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _verifiable(self) -> MetaGatewaySettings:
        if self.webhook_secret is None and not self.allow_unsigned:
            raise ValueError(
                "set RELAYBOX_META__WEBHOOK_SECRET, or RELAYBOX_META__ALLOW_UNSIGNED=true to "
                "accept unsigned webhooks"
            )
        return self


class PushReceiptSettings(BaseModel):
    """The push gateway's delivery receipts (`/webhooks/push`)."""

    webhook_secret: str = Field(
        default=DEV_WEBHOOK_SECRET,
        min_length=1,
        description="HMAC-SHA256 key of the receipts' X-Hub-Signature-256 (always required)",
    )


MIB = 1024 * 1024
DEFAULT_MAILING_SUBJECT = "Complete your registration"
DEFAULT_MAILING_BODY = "Thank you for signing up. Please verify your token {token} to continue."


class MailingSettings(BaseModel):
    """Bulk mailings from an uploaded CSV (`/mailings`)."""

    max_file_bytes: int = Field(default=100 * MIB, ge=1, description="largest accepted upload")
    chunk_bytes: int = Field(
        default=MIB, ge=1024, le=64 * MIB, description="size of one stored `mailing_chunks` row"
    )
    reupload_window_s: int = Field(
        default=600, ge=0, description="the same file again within it answers the same mailing"
    )
    max_rows: int = Field(default=2_000_000, ge=1, description="rows a file may hold (parser)")
    default_subject: str = Field(default=DEFAULT_MAILING_SUBJECT, min_length=1, max_length=255)
    default_body: str = Field(default=DEFAULT_MAILING_BODY, min_length=1)
    provider_rate_per_second: float = Field(
        default=0.1, gt=0, description="sends per second of the email API: the ETA's pace"
    )

    @field_validator("default_body")
    @classmethod
    def _has_token(cls, value: str) -> str:
        if TOKEN_PLACEHOLDER not in value:
            raise ValueError(f"must contain {TOKEN_PLACEHOLDER}")
        return value


class ApiSettings(ServiceSettings, WebhookRetention):
    """Everything the API reads from the environment."""

    api: HttpServerSettings = HttpServerSettings(port=3000)
    dev_mode: bool = False
    timezone: str = Field(default="UTC", description="day boundary of the logs' `stats.today`")
    auth: AuthSettings = AuthSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    tracing: TracingSettings = TracingSettings()
    idempotency_ttl_h: int = Field(default=24, ge=1)
    email_from: str = Field(default="relaybox@localhost", description="default From address")
    max_body_bytes: int = Field(
        default=MIB, ge=1024, description="largest request body outside uploads (413 beyond)"
    )
    meta: MetaGatewaySettings = MetaGatewaySettings()
    push: PushReceiptSettings = PushReceiptSettings()
    mailings: MailingSettings = MailingSettings()
    chat: ChatSettings = ChatSettings()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}") from None
        return value
