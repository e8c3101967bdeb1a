"""Consumer settings (`RELAYBOX_` prefix)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from relaybox.common.faults import FaultSettings
from relaybox.common.settings import (
    ChatSettings,
    HttpServerSettings,
    ServiceSettings,
    WebhookRetention,
)
from relaybox.consumer.mailings.ingest import MailingParseSettings
from relaybox.consumer.providers.email_api import EmailApiSettings
from relaybox.consumer.providers.meta import MetaProviderSettings
from relaybox.consumer.providers.push import PushSettings
from relaybox.consumer.providers.smtp import SmtpSettings


class ConsumerSettings(ServiceSettings, WebhookRetention):
    """Everything the consumer reads from the environment."""

    prefetch: int = Field(default=32, ge=1, le=1000, description="unacked messages per replica")
    max_attempts: int = Field(default=3, ge=1, description="send attempts before FAILED + DLQ")
    lease_s: float = Field(default=60.0, gt=0, description="how long a SENDING claim is owned")
    db_retry_s: float = Field(default=60.0, ge=0, description="ride out a database restart")
    shutdown_grace_s: float = Field(default=30.0, gt=0)
    email_provider: Literal["smtp", "http-api"] = Field(
        default="smtp", description="how every email is sent, single sends included"
    )
    smtp: SmtpSettings = SmtpSettings()
    email_api: EmailApiSettings = EmailApiSettings()
    meta: MetaProviderSettings = MetaProviderSettings()
    push: PushSettings = PushSettings()
    sweep_interval_s: float = Field(default=30.0, gt=0, description="0 < how often to sweep")
    dispatch_interval_s: float = Field(default=0.5, gt=0, description="mailing dispatch rounds")
    mailing_ahead_s: float = Field(
        default=5.0, gt=0, description="queue at most this many seconds of sends ahead (pause lag)"
    )
    mailing_max_in_flight: int = Field(
        default=100, ge=1, description="queued mailing emails when the provider has no limit"
    )
    mailings: MailingParseSettings = MailingParseSettings()
    idempotency_retention_h: float = Field(
        default=48.0,
        gt=0,
        description="stored Idempotency-Key answers are deleted after this long (keep it above "
        "the API's RELAYBOX_IDEMPOTENCY_TTL_H, the window in which they are replayed)",
    )
    stale_parse_s: float = Field(
        default=600.0,
        gt=0,
        description="a mailing still parsing with no progress this long gets a new parse message",
    )
    stale_pending_s: float = Field(
        default=900.0, gt=0, description="PENDING this long with no progress is re-enqueued"
    )
    chat: ChatSettings = ChatSettings()
    consumer: HttpServerSettings = HttpServerSettings(port=9102)
    faults: FaultSettings = FaultSettings()
