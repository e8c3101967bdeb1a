"""HTTP routes of the Meta-like mock: sends, sent messages, stats, config and simulations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Controller, Request, Response, Router, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import ClientException, NotFoundException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody

from relaybox.mock_meta.meta.mock import MetaMock
from relaybox.mock_meta.meta.models import (
    ConfigPatch,
    InboundAccepted,
    InboundRequest,
    MetaConfig,
    MetaStats,
    SendAccepted,
    SendError,
    SendRequest,
    SentMessage,
)
from relaybox.mock_meta.meta.state import SendOutcome

MetaDependency = NamedDependency[MetaMock]
_OPT_KEY = "meta_mock"
_SEND_ERRORS = {
    400: "missing field, empty text, unknown channel or unreadable body (retryable: false)",
    429: "rate limit exceeded or simulated; carries Retry-After (seconds)",
    500: "simulated failure",
    502: "simulated failure",
    503: "simulated failure",
    504: "simulated failure",
}


def _send_response(outcome: SendOutcome) -> Response[SendAccepted | SendError]:
    headers = {} if outcome.retry_after_s is None else {"Retry-After": str(outcome.retry_after_s)}
    return Response(outcome.body, status_code=outcome.status_code, headers=headers)


def _unreadable_send(
    request: Request[Any, Any, Any], exc: ClientException
) -> Response[SendAccepted | SendError]:
    """A body Litestar could not decode still gets Meta's error shape and is counted."""
    provide_meta: Callable[[], MetaMock] = request.route_handler.opt[_OPT_KEY]
    meta = provide_meta()
    details = []
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        details = [
            f"{item.get('key')}: {item.get('message')}"
            for item in exc.extra
            if isinstance(item, dict) and item.get("key") != "data"
        ]
    outcome = meta.send_unreadable("; ".join(details) or None)
    return _send_response(outcome)


class MetaController(Controller):
    """The provider API and the switches a test uses to steer it."""

    path = "/"
    tags = ["meta provider"]

    @post(
        "/messages",
        status_code=200,
        exception_handlers={ClientException: _unreadable_send},
        responses={
            code: ResponseSpec(data_container=SendError, description=text)
            for code, text in _SEND_ERRORS.items()
        },
    )
    async def send_message(
        self, meta: MetaDependency, data: JSONBody[SendRequest]
    ) -> Response[SendAccepted | SendError]:
        """Send a WhatsApp / Instagram message; answers like the provider would (see config)."""
        return _send_response(meta.send(data))

    @get("/messages/{provider_message_id:str}")
    async def get_message(
        self, meta: MetaDependency, provider_message_id: FromPath[str]
    ) -> SentMessage:
        """One accepted message with the status events emitted so far."""
        message = meta.state.message(provider_message_id)
        if message is None:
            raise NotFoundException(detail=f"no message {provider_message_id!r}")
        return message

    @delete("/messages")
    async def reset(self, meta: MetaDependency) -> None:
        """Forget sent messages and zero the stats (the config stays)."""
        meta.state.reset()

    @get("/stats")
    async def get_stats(self, meta: MetaDependency) -> MetaStats:
        """Counters since start or the last reset, with arrivals per clientMessageId."""
        return meta.state.stats_snapshot()

    @get("/config")
    async def get_config(self, meta: MetaDependency) -> MetaConfig:
        """The current behaviour switches."""
        return meta.state.config

    @post("/config", status_code=200)
    async def set_config(self, meta: MetaDependency, data: JSONBody[ConfigPatch]) -> MetaConfig:
        """Merge the given switches into the config; `seed` reseeds the RNG."""
        return meta.state.configure(data)

    @post("/simulate/inbound", status_code=200)
    async def simulate_inbound(
        self, meta: MetaDependency, data: JSONBody[InboundRequest]
    ) -> InboundAccepted:
        """Post an inbound customer message to the gateway webhook."""
        return await meta.simulate_inbound(data)


def build_meta_router(meta: MetaMock) -> Router:
    """The Meta-like routes (at the root) bound to one mock."""

    def provide_meta() -> MetaMock:
        return meta

    return Router(
        path="/",
        route_handlers=[MetaController],
        dependencies={"meta": Provide(provide_meta, sync_to_thread=False)},
        opt={_OPT_KEY: provide_meta},  # opt is deep-copied per handler; a function is not
    )
