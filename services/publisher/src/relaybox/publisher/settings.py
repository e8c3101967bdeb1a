"""Publisher settings (`RELAYBOX_` prefix)."""

from __future__ import annotations

from pydantic import Field

from relaybox.common.faults import FaultSettings
from relaybox.common.settings import HttpServerSettings, ServiceSettings


class PublisherSettings(ServiceSettings):
    """Everything the publisher reads from the environment."""

    batch_size: int = Field(default=200, ge=1, le=5000)
    poll_interval_s: float = Field(default=1.0, gt=0, description="backstop poll when no NOTIFY")
    linger_s: float = Field(
        default=0.005,
        ge=0,
        le=1.0,
        description="under a steady stream of rows, wait this long after a wake-up so the next "
        "batch takes what arrives meanwhile (fewer, larger batches); 0: never",
    )
    publish_timeout_s: float = Field(default=10.0, gt=0)
    retry_backoff_s: float = Field(default=1.0, gt=0, description="first delay after a nack/return")
    retry_backoff_max_s: float = Field(default=300.0, gt=0)
    metrics_interval_s: float = Field(default=5.0, gt=0)
    publisher: HttpServerSettings = HttpServerSettings(port=9101)
    faults: FaultSettings = FaultSettings()
