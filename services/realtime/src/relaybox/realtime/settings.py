"""Realtime settings (`RELAYBOX_` prefix)."""

from __future__ import annotations

import os
import socket

from pydantic import BaseModel, Field

from relaybox.common.auth import AuthSettings
from relaybox.common.settings import ChatSettings, ServiceSettings


def _replica_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class StreamServerSettings(BaseModel):
    """The sockets (`RELAYBOX_REALTIME__*`)."""

    host: str = "127.0.0.1"
    port: int = Field(default=3100, ge=0, le=65535)
    replica: str = Field(
        default_factory=_replica_name,
        min_length=1,
        max_length=200,
        description="this replica's name (its queue and presence rows); default host-pid",
    )
    heartbeat_s: float = Field(
        default=20.0, gt=0, description="WebSocket ping interval; a peer missing two is closed"
    )
    send_buffer: int = Field(
        default=256,
        ge=1,
        description="frames queued for one client; a client that falls this far behind is "
        "closed with 4008 and resumes",
    )
    replay_page: int = Field(default=500, ge=1, le=10_000, description="events per replay query")
    checkpoint_interval_s: float = Field(
        default=0.1, gt=0, description="how often the replica tries to advance checkpoints"
    )
    ack_flush_s: float = Field(
        default=0.02,
        ge=0,
        description="acks are written in one transaction per this interval (per replica)",
    )
    shutdown_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="on SIGTERM: refuse new sockets, then close the open ones with 1012 after this",
    )
    max_frame_bytes: int = Field(default=64 * 1024, ge=1024, description="largest client frame")
    listen_backlog: int = Field(
        default=4096,
        ge=1,
        description="connections the kernel queues before they are accepted (capped by "
        "net.core.somaxconn): a reconnect storm arrives at once",
    )


class RealtimeSettings(ServiceSettings):
    """Everything the realtime service reads from the environment."""

    realtime: StreamServerSettings = StreamServerSettings()
    auth: AuthSettings = AuthSettings()
    chat: ChatSettings = ChatSettings()
    dev_mode: bool = False
