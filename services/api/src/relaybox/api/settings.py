"""API settings (`RELAYBOX_` prefix)."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator, model_validator

from relaybox.common.settings import HttpServerSettings, ServiceSettings

# Refused outside dev mode; 32+ bytes so that PyJWT does not warn about the key length in dev.
PLACEHOLDER_SECRET = "dev-insecure-secret-change-me-outside-dev"  # noqa: S105


class AuthSettings(BaseModel):
    """Bearer JWT (HS256)."""

    jwt_secret: str = PLACEHOLDER_SECRET
    token_ttl_s: int = Field(default=86_400, gt=0, description="lifetime of tokens made by `token`")


class RateLimitSettings(BaseModel):
    """Per-client limit on sending endpoints."""

    send_per_minute: int = Field(default=600, ge=1)


# The mock-meta service signs its webhooks with the same development default.
DEV_WEBHOOK_SECRET = "dev-mock-meta-webhook-secret"  # noqa: S105
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


class ApiSettings(ServiceSettings):
    """Everything the API reads from the environment."""

    api: HttpServerSettings = HttpServerSettings(port=3000)
    dev_mode: bool = False
    timezone: str = Field(default="UTC", description="day boundary of the logs' `stats.today`")
    auth: AuthSettings = AuthSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    idempotency_ttl_h: int = Field(default=24, ge=1)
    email_from: str = Field(default="relaybox@localhost", description="default From address")
    meta: MetaGatewaySettings = MetaGatewaySettings()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}") from None
        return value
