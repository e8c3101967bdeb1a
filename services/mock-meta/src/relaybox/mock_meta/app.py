"""The mock-meta Litestar application: health, metrics, the SMTP sink, Meta-like and email API,
and the providers' call ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

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
    API by `Idempotency-Key`, Meta by `clientMessageId`."""

    smtp: LedgerView
    email_api: LedgerView
    meta: LedgerView


def ledger_route(sink: SmtpSink, meta: MetaMock, email_api: EmailApiMock) -> HTTPRouteHandler:
    """`GET /ledger` over the three mocks (cleared by each one's `DELETE .../messages`)."""

    @get("/ledger", tags=["ledger"], sync_to_thread=False)
    def ledger() -> Ledgers:
        """Calls per item and when each was accepted, from every mock provider."""
        return Ledgers(
            smtp=sink.ledger.view(),
            email_api=email_api.ledger.view(),
            meta=meta.state.ledger.view(),
        )

    return ledger


def sink_lifespan(sink: SmtpSink) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """Start the sink with the app unless it already runs; stop only what was started here."""

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        started_here = not sink.running
        if started_here:
            await sink.start()
        try:
            yield
        finally:
            if started_here:
                await sink.stop()

    return lifespan


def meta_lifespan(meta: MetaMock) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """Open the Meta mock's webhook client unless it is open; on stop cancel what runs."""

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        started_here = not meta.running
        if started_here:
            await meta.start()
        try:
            yield
        finally:
            if started_here:
                await meta.stop()

    return lifespan


def create_app(
    settings: MockMetaSettings,
    sink: SmtpSink | None = None,
    meta: MetaMock | None = None,
    email_api: EmailApiMock | None = None,
) -> Litestar:
    """Build the app; it owns a sink, a Meta mock and an email API mock made from `settings`
    unless injected."""
    smtp_sink = sink if sink is not None else SmtpSink(settings.smtp_sink)
    meta_mock = meta if meta is not None else MetaMock(settings.meta)
    email_api_mock = email_api if email_api is not None else EmailApiMock(settings.email_api)
    return Litestar(
        logging_config=None,  # relaybox.common.observability.logging owns the root logger
        route_handlers=[
            health,
            metrics,
            build_smtp_router(smtp_sink),
            build_meta_router(meta_mock),
            build_email_api_router(email_api_mock),
            ledger_route(smtp_sink, meta_mock, email_api_mock),
        ],
        lifespan=[sink_lifespan(smtp_sink), meta_lifespan(meta_mock)],
        state=State(
            {"smtp_sink": smtp_sink, "meta_mock": meta_mock, "email_api_mock": email_api_mock}
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
