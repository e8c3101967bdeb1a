"""Settings models shared by every service (each service composes them into its own class)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PostgresDsn, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "RELAYBOX_"


class DatabaseSettings(BaseModel):
    """PostgreSQL connection."""

    url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/relaybox"
    pool_size: int = Field(
        default=30,
        ge=1,
        description="connections kept open; size it for the usual number of concurrent requests "
        "(more is fine: a connection is opened when first needed)",
    )
    max_overflow: int = Field(
        default=10,
        ge=0,
        description="extra connections under a burst, closed again when returned (opening one "
        "costs a few ms of CPU: a pool too small for the steady load churns them)",
    )
    pool_pre_ping: bool = Field(
        default=True, description="test each connection on checkout (survives a DB restart)"
    )
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _asyncpg_url(cls, value: str) -> str:
        PostgresDsn(value.replace("+asyncpg", ""))  # validate the shape
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        return value


class BrokerSettings(BaseModel):
    """RabbitMQ connection and topology."""

    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    topology_prefix: str = Field(
        default="", description="prefix of every exchange and queue name (tests, tenants)"
    )
    retry_delays_ms: list[int] = Field(
        default=[5_000, 30_000, 120_000, 600_000],
        min_length=1,
        description="one retry tier (TTL queue) per delay",
    )
    delivery_limit: int = Field(
        default=5, ge=1, description="redeliveries before a crashing message is dead-lettered"
    )


class LogSettings(BaseModel):
    """Logging."""

    level: str = "INFO"
    json_format: bool = True


class HttpServerSettings(BaseModel):
    """Where a service listens for HTTP (a worker's /health, /ready, /metrics; 0 = off)."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 disables a worker's server")


class ServiceSettings(BaseSettings):
    """Base of every service's settings class: `RELAYBOX_` prefix, `__` for nesting."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", env_file=None
    )

    database: DatabaseSettings = DatabaseSettings()
    broker: BrokerSettings = BrokerSettings()
    log: LogSettings = LogSettings()


class WebhookRetention(BaseModel):
    """One setting two services read (`RELAYBOX_WEBHOOK_EVENT_RETENTION_H`): the consumers'
    sweeper deletes webhook events older than this, so the API takes no inbound event older
    than this (it could be one seen, processed and forgotten)."""

    webhook_event_retention_h: float = Field(
        default=168.0,
        gt=0,
        description="webhook events are remembered (de-duplicated) this long; an inbound event "
        "older than this is acknowledged and not stored. Keep it above the provider's retry "
        "window",
    )


class AttachmentStorageSettings(BaseModel):
    """Where attachment files live (`RELAYBOX_CHAT__STORAGE__*`): a local directory or any
    S3-compatible server, each file under its sha256."""

    kind: Literal["local", "s3"] = Field(default="local", description="`local` or `s3`")
    root: Path = Field(
        default=Path("var/attachments"),
        description="local: the directory of the files (keep it outside any served directory)",
    )
    endpoint_url: str | None = Field(
        default=None, description="s3: the server's URL (empty: AWS's own endpoint)"
    )
    bucket: str = Field(default="", description="s3: the bucket (it must exist)")
    region: str = Field(default="us-east-1", min_length=1, description="s3: the region")
    access_key_id: SecretStr | None = Field(default=None, description="s3: the access key")
    secret_access_key: SecretStr | None = Field(default=None, description="s3: its secret")
    prefix: str = Field(default="", description="s3: prefix of every object key")

    @field_validator("endpoint_url")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _s3_has_bucket(self) -> AttachmentStorageSettings:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("set RELAYBOX_CHAT__STORAGE__BUCKET when the storage kind is s3")
        return self


class ChatSettings(BaseModel):
    """The messenger (`RELAYBOX_CHAT__*`): what the API and the consumer's sweeper share."""

    fanout_batch: int = Field(
        default=250,
        ge=1,
        le=10_000,
        description="recipients per `chat.deliver` message: a post to a large group is pushed "
        "as this many recipients per consumer task",
    )
    max_attachment_bytes: int = Field(
        default=25 * 1024 * 1024, ge=1, description="largest accepted attachment upload"
    )
    attachment_retention_h: float = Field(
        default=24.0, gt=0, description="uploads never attached to a message are deleted after"
    )
    storage: AttachmentStorageSettings = AttachmentStorageSettings()
    event_retention_h: float = Field(
        default=168.0,
        gt=0,
        description="chat events (what a realtime client resumes from) are kept this long; a "
        "client away longer gets `resync`",
    )
    stream_ticket_ttl_s: float = Field(
        default=30.0, gt=0, le=600, description="lifetime of a `POST /chat/stream-tickets` ticket"
    )
    presence_ttl_s: float = Field(
        default=45.0,
        gt=0,
        description="a device's socket counts as live this long after its replica last saw it "
        "(keep it above two realtime heartbeats): the consumer does not push to a live device",
    )
    socket_ack_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="a message a live socket was to deliver and that its user has not acked "
        "(nor fetched, nor read) this long after the push round is pushed to that device after "
        "all (the socket dropped, or its replica died, before the ack)",
    )
