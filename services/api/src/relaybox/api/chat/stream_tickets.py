"""POST /chat/stream-tickets: a short-lived, single-use ticket that opens the realtime stream
(`relaybox.common.chat.tickets`), for clients that cannot set headers on a WebSocket."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.di import NamedDependency

from relaybox.api.auth import Client, requires
from relaybox.api.settings import ApiSettings
from relaybox.common.auth import Caller
from relaybox.common.chat.tickets import issue_ticket


class StreamTicket(msgspec.Struct, rename="camel"):
    """A ticket for `GET ws://…/chat/stream?ticket=…`: the caller's identity, valid once until
    `expiresAt` (`expiresInS` seconds from now, whole seconds). Never a bearer token."""

    ticket: str
    expires_at: datetime
    expires_in_s: int


class StreamTicketController(Controller):
    """/chat/stream-tickets: how a client opens the realtime stream."""

    path = "/stream-tickets"
    tags = ["chat"]

    @post(
        "/",
        opt=requires("chat:read"),
        status_code=201,
        summary="Get a ticket for the realtime stream",
        description="A signed ticket naming the caller, to open the realtime WebSocket "
        "(`GET /chat/stream?ticket=…` on the realtime service) once, within "
        "`RELAYBOX_CHAT__STREAM_TICKET_TTL_S` seconds (30 by default). It carries the caller's "
        "scopes and tenant; it is refused as a bearer token by this API, and a used or expired "
        "ticket is refused by the stream (401). Nothing is stored until the stream uses it.",
    )
    async def issue(
        self, request: Request[Client, Any, State], settings: NamedDependency[ApiSettings]
    ) -> StreamTicket:
        client: Client = request.user
        ttl_s = settings.chat.stream_ticket_ttl_s
        ticket, expires_at = issue_ticket(
            settings.auth, Caller(client.id, client.tenant, client.scopes), ttl_s
        )
        return StreamTicket(ticket=ticket, expires_at=expires_at, expires_in_s=int(ttl_s))
