"""HTTP routes under /smtp that inspect and steer the development SMTP sink."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Response, Router, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody, QueryParameter

from relaybox.mock_meta.smtp.sink import SinkConfig, SinkConfigPatch, SinkStats, SmtpSink
from relaybox.mock_meta.smtp.store import SmtpMessage, StoredMessage

SinkDependency = NamedDependency[SmtpSink]
_ID = "Message-ID header; the angle brackets are optional"


class SmtpMessageList(msgspec.Struct, frozen=True, kw_only=True):
    """Received messages in arrival order and how many matched."""

    data: list[SmtpMessage]
    total: int


def _stored_or_404(sink: SmtpSink, seq: int) -> StoredMessage:
    stored = sink.store.get(seq)
    if stored is None:
        raise NotFoundException(detail=f"no SMTP message with id {seq}")
    return stored


class SmtpController(Controller):
    """Messages the sink accepted, its failure switches and its counters."""

    path = "/"
    tags = ["smtp sink"]

    @get("/messages")
    async def list_messages(
        self,
        smtp_sink: SinkDependency,
        to: Annotated[str | None, QueryParameter(description="envelope recipient")] = None,
        message_id: Annotated[str | None, QueryParameter(name="messageId", description=_ID)] = None,
    ) -> SmtpMessageList:
        """List received messages, optionally filtered by recipient and Message-ID."""
        found = smtp_sink.store.find(to=to, message_id=message_id)
        return SmtpMessageList(data=found, total=len(found))

    @get("/messages/{seq:int}")
    async def get_message(self, smtp_sink: SinkDependency, seq: FromPath[int]) -> SmtpMessage:
        """One received message."""
        return _stored_or_404(smtp_sink, seq).message

    @get("/messages/{seq:int}/raw", media_type="message/rfc822")
    async def get_raw_message(
        self, smtp_sink: SinkDependency, seq: FromPath[int]
    ) -> Response[bytes]:
        """The bytes of one received message exactly as the DATA command carried them."""
        return Response(_stored_or_404(smtp_sink, seq).raw, media_type="message/rfc822")

    @delete("/messages")
    async def clear_messages(self, smtp_sink: SinkDependency) -> None:
        """Forget every message and zero the counters."""
        smtp_sink.reset()

    @get("/config")
    async def get_config(self, smtp_sink: SinkDependency) -> SinkConfig:
        """The current failure switches."""
        return smtp_sink.config

    @post("/config", status_code=200)
    async def set_config(
        self, smtp_sink: SinkDependency, data: JSONBody[SinkConfigPatch]
    ) -> SinkConfig:
        """Change the failure switches given (the others stay)."""
        return smtp_sink.configure(data)

    @get("/stats")
    async def get_stats(self, smtp_sink: SinkDependency) -> SinkStats:
        """Accepted and rejected counts since the last reset."""
        return smtp_sink.stats


def build_smtp_router(sink: SmtpSink) -> Router:
    """The /smtp routes bound to one sink."""

    def provide_sink() -> SmtpSink:
        return sink

    return Router(
        path="/smtp",
        route_handlers=[SmtpController],
        dependencies={"smtp_sink": Provide(provide_sink, sync_to_thread=False)},
    )
