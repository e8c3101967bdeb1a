"""API settings (`RELAYBOX_` prefix)."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator

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


class ApiSettings(ServiceSettings):
    """Everything the API reads from the environment."""

    api: HttpServerSettings = HttpServerSettings(port=3000)
    dev_mode: bool = False
    timezone: str = Field(default="UTC", description="day boundary of the logs' `stats.today`")
    auth: AuthSettings = AuthSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    idempotency_ttl_h: int = Field(default=24, ge=1)
    email_from: str = Field(default="relaybox@localhost", description="default From address")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}") from None
        return value
