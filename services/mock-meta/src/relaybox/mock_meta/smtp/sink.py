"""The development SMTP sink: an aiosmtpd server in the running event loop with failure switches."""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from email.parser import BytesHeaderParser
from typing import Annotated, Any, Literal

import msgspec
from aiosmtpd.smtp import SMTP

from relaybox.mock_meta.control import merged, take_failure
from relaybox.mock_meta.ledger import CallLedger
from relaybox.mock_meta.settings import SmtpSinkSettings
from relaybox.mock_meta.smtp.store import MessageStore, parse_message

log = logging.getLogger(__name__)

SinkMode = Literal["accept", "transient", "permanent"]
FailureKind = Literal["transient", "permanent"]

FAILURE_REPLIES: dict[FailureKind, str] = {
    "transient": "451 4.3.0 Temporary failure (mock)",
    "permanent": "550 5.1.1 Mailbox unavailable (mock)",
}
_HOSTNAME = "mock-meta.relaybox.local"


class SinkConfig(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True
):
    """Failure switches: `fail_next` messages get `failure`, then `mode` applies to the rest;
    in `accept` mode a random `failure_rate` of them get `failure` too."""

    mode: SinkMode = "accept"
    fail_next: Annotated[int, msgspec.Meta(ge=0)] = 0
    failure: FailureKind = "transient"
    failure_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


class SinkConfigPatch(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True
):
    """POST /smtp/config: the switches to change (the others stay)."""

    mode: SinkMode | msgspec.UnsetType = msgspec.UNSET
    fail_next: Annotated[int, msgspec.Meta(ge=0)] | msgspec.UnsetType = msgspec.UNSET
    failure: FailureKind | msgspec.UnsetType = msgspec.UNSET
    failure_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] | msgspec.UnsetType = msgspec.UNSET


class SinkStats(msgspec.Struct, kw_only=True, rename="camel"):
    """Counters since the last reset; `stored` is how many messages the ring buffer holds."""

    accepted: int = 0
    rejected_transient: int = 0
    rejected_permanent: int = 0
    stored: int = 0


class _SinkHandler:
    """aiosmtpd handler: answers DATA through the sink."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or b""
        return self._sink.receive(str(envelope.mail_from or ""), list(envelope.rcpt_tos), raw)


class SmtpSink:
    """SMTP server bound in the current event loop that records or rejects every message."""

    def __init__(self, settings: SmtpSinkSettings) -> None:
        self._settings = settings
        self._store = MessageStore(settings.max_messages)
        self._config = SinkConfig()
        self._stats = SinkStats()
        self._handler = _SinkHandler(self)
        self._rng = random.Random()
        self.ledger = CallLedger()
        self._server: asyncio.Server | None = None
        self._connections: weakref.WeakSet[asyncio.BaseProtocol] = weakref.WeakSet()

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._server is not None

    @property
    def host(self) -> str:
        """The configured bind address."""
        return self._settings.host

    @property
    def port(self) -> int:
        """The bound port (the real one when the settings ask for port 0)."""
        if self._server is None:
            raise RuntimeError("the SMTP sink is not running")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def store(self) -> MessageStore:
        """The received messages."""
        return self._store

    @property
    def config(self) -> SinkConfig:
        """The current failure switches."""
        return self._config

    @property
    def stats(self) -> SinkStats:
        """A snapshot of the counters."""
        return msgspec.structs.replace(self._stats, stored=len(self._store))

    def configure(self, patch: SinkConfig | SinkConfigPatch) -> SinkConfig:
        """Merge the switches given into the failure switches (a whole `SinkConfig` replaces)."""
        config = merged(self._config, patch)
        if config.fail_next < 0:
            raise ValueError("fail_next must be >= 0")
        self._config = config
        log.info(
            "smtp sink configured",
            extra={"mode": config.mode, "fail_next": config.fail_next, "failure": config.failure},
        )
        return config

    def reset(self) -> None:
        """Forget every message, the ledger and the counters (the failure switches stay)."""
        self._store.clear()
        self._stats = SinkStats()
        self.ledger.clear()

    async def start(self) -> None:
        """Listen in the running event loop; a no-op when already listening."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self._new_protocol(loop), host=self._settings.host, port=self._settings.port
        )
        log.info("smtp sink listening", extra={"host": self._settings.host, "port": self.port})

    async def stop(self) -> None:
        """Stop listening and drop open connections; a no-op when not running."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for protocol in list(self._connections):
            _close_transport(protocol)
        await server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost callbacks run before the loop moves on
        log.info("smtp sink stopped")

    def receive(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> str:
        """Record or reject one message; returns the SMTP reply to the end of DATA."""
        failure = self._take_failure()
        self.ledger.record(_message_id(raw), accepted=failure is None)
        if failure is not None:
            self._count_rejection(failure)
            log.info("smtp sink rejected a message", extra={"failure": failure, "to": rcpt_tos})
            return FAILURE_REPLIES[failure]
        stored = parse_message(self._store.next_id(), mail_from, rcpt_tos, raw)
        self._store.add(stored)
        self._stats.accepted += 1
        return f"250 2.0.0 OK queued as {stored.message.id}"

    def _take_failure(self) -> FailureKind | None:
        config = self._config
        accepting = config.mode == "accept"
        fail_next, failure = take_failure(
            self._rng,
            fail_next=config.fail_next,
            next_failure=config.failure,
            failure_rate=config.failure_rate if accepting else 0.0,
            choices=(config.failure,),
        )
        if fail_next != config.fail_next:
            self._config = msgspec.structs.replace(config, fail_next=fail_next)
        if failure is None and config.mode != "accept":
            return config.mode
        return failure

    def _count_rejection(self, failure: FailureKind) -> None:
        if failure == "transient":
            self._stats.rejected_transient += 1
        else:
            self._stats.rejected_permanent += 1

    def _new_protocol(self, loop: asyncio.AbstractEventLoop) -> asyncio.BaseProtocol:
        protocol: asyncio.BaseProtocol = SMTP(
            self._handler, hostname=_HOSTNAME, ident="relaybox mock-meta SMTP sink", loop=loop
        )
        self._connections.add(protocol)
        return protocol


def _message_id(raw: bytes) -> str | None:
    """The Message-ID header without its angle brackets (the ledger's key), if any."""
    value = BytesHeaderParser().parsebytes(raw).get("Message-ID")
    return None if value is None else str(value).strip().strip("<>").strip() or None


def _close_transport(protocol: asyncio.BaseProtocol) -> None:
    transport: asyncio.BaseTransport | None = getattr(protocol, "transport", None)
    if transport is not None and not transport.is_closing():
        transport.close()
