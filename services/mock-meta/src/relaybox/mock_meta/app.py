"""The mock-meta Litestar application: health, metrics, the SMTP sink, Meta-like and email API,
the push gateway, and the providers' call ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import msgspec
from litestar import Litestar, Response, get
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsPlugin
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relaybox.mock_meta.email_api.mock import EmailApiMock
from relaybox.mock_meta.email_api.routes import BEARER_SCHEME, build_email_api_router
from relaybox.mock_meta.ledger import LedgerView
from relaybox.mock_meta.meta.mock import MetaMock
from relaybox.mock_meta.meta.routes import build_meta_router
from relaybox.mock_meta.push.mock import PushMock
from relaybox.mock_meta.push.routes import build_push_router
from relaybox.mock_meta.settings import MockMetaSettings
from relaybox.mock_meta.smtp.routes import build_smtp_router
from relaybox.mock_meta.smtp.sink import SmtpSink


class Health(msgspec.Struct, frozen=True):
    """Liveness answer."""

    status: str


@get("/health", tags=["health"])
async def health() -> Health:
    """The process is up."""
    return Health(status="ok")


@get("/metrics", tags=["health"], include_in_schema=False, sync_to_thread=False)
def metrics() -> Response[bytes]:
    """Prometheus metrics of this process."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class Ledgers(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Every provider's calls per item key: SMTP by Message-ID (no angle brackets), the email
    API and the push gateway by `Idempotency-Key`, Meta by `clientMessageId`."""

    smtp: LedgerView
    email_api: LedgerView
    meta: LedgerView
    push: LedgerView


def ledger_route(
    sink: SmtpSink, meta: MetaMock, email_api: EmailApiMock, push: PushMock
) -> HTTPRouteHandler:
    """`GET /ledger` over the four mocks (cleared by each one's `DELETE .../messages`)."""

    @get("/ledger", tags=["ledger"], sync_to_thread=False)
    def ledger() -> Ledgers:
        """Calls per item and when each was accepted, from every mock provider."""
        return Ledgers(
            smtp=sink.ledger.view(),
            email_api=email_api.ledger.view(),
            meta=meta.state.ledger.view(),
            push=push.state.ledger.view(),
        )

    return ledger


class OwnedService(Protocol):
    """A mock part the app starts and stops: the SMTP sink, the Meta and push mocks."""

    @property
    def running(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def owned_lifespan(
    service: OwnedService,
) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """Start `service` with the app unless it already runs (an injected one); on stop, stop only
    what was started here (the mocks cancel their background deliveries)."""

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        started_here = not service.running
        if started_here:
            await service.start()
        try:
            yield
        finally:
            if started_here:
                await service.stop()

    return lifespan


def create_app(
    settings: MockMetaSettings,
    sink: SmtpSink | None = None,
    meta: MetaMock | None = None,
    email_api: EmailApiMock | None = None,
    push: PushMock | None = None,
) -> Litestar:
    """Build the app; it owns a sink, a Meta mock, an email API mock and a push gateway mock
    made from `settings` unless injected."""
    smtp_sink = sink if sink is not None else SmtpSink(settings.smtp_sink)
    meta_mock = meta if meta is not None else MetaMock(settings.meta)
    email_api_mock = email_api if email_api is not None else EmailApiMock(settings.email_api)
    push_mock = push if push is not None else PushMock(settings.push)
    return Litestar(
        logging_config=None,  # relaybox.common.observability.logging owns the root logger
        route_handlers=[
            health,
            metrics,
            build_smtp_router(smtp_sink),
            build_meta_router(meta_mock),
            build_email_api_router(email_api_mock),
            build_push_router(push_mock),
            ledger_route(smtp_sink, meta_mock, email_api_mock, push_mock),
        ],
        lifespan=[owned_lifespan(smtp_sink), owned_lifespan(meta_mock), owned_lifespan(push_mock)],
        state=State(
            {
                "smtp_sink": smtp_sink,
                "meta_mock": meta_mock,
                "email_api_mock": email_api_mock,
                "push_mock": push_mock,
            }
        ),
        plugins=[ProblemDetailsPlugin(ProblemDetailsConfig(enable_for_all_http_exceptions=True))],
        openapi_config=OpenAPIConfig(
            title="relaybox mock-meta",
            version="0.1.0",
            path="/api",
            render_plugins=[SwaggerRenderPlugin()],
            components=Components(
                security_schemes={BEARER_SCHEME: SecurityScheme(type="http", scheme="bearer")}
            ),
        ),
    )
