"""Settings of the mock-meta service (HTTP server and the development SMTP sink)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from relaybox.common.settings import HttpServerSettings, ServiceSettings


class SmtpSinkSettings(BaseModel):
    """The in-process SMTP sink that records every message it accepts."""

    host: str = "127.0.0.1"
    port: int = Field(default=1025, ge=0, le=65535, description="0 binds a free port")
    max_messages: int = Field(
        default=10_000, ge=1, description="ring buffer cap: the oldest message is dropped first"
    )


class MockMetaSettings(ServiceSettings):
    """Everything `python -m relaybox.mock_meta` reads from `RELAYBOX_*` variables."""

    mock_meta: HttpServerSettings = HttpServerSettings(port=4000)
    smtp_sink: SmtpSinkSettings = SmtpSinkSettings()
