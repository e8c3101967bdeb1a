"""The mock-meta Litestar application: health, the SMTP sink routes and their lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import msgspec
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsPlugin

from relaybox.mock_meta.settings import MockMetaSettings
from relaybox.mock_meta.smtp_routes import build_smtp_router
from relaybox.mock_meta.smtp_sink import SmtpSink


class Health(msgspec.Struct, frozen=True):
    """Liveness answer."""

    status: str


@get("/health", tags=["health"])
async def health() -> Health:
    """The process is up."""
    return Health(status="ok")


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


def create_app(settings: MockMetaSettings, sink: SmtpSink | None = None) -> Litestar:
    """Build the app; it owns a sink made from `settings.smtp_sink` unless one is injected."""
    smtp_sink = sink if sink is not None else SmtpSink(settings.smtp_sink)
    return Litestar(
        logging_config=None,  # relaybox.common.observability.logging owns the root logger
        route_handlers=[health, build_smtp_router(smtp_sink)],
        lifespan=[sink_lifespan(smtp_sink)],
        state=State({"smtp_sink": smtp_sink}),
        plugins=[ProblemDetailsPlugin(ProblemDetailsConfig(enable_for_all_http_exceptions=True))],
        openapi_config=OpenAPIConfig(
            title="relaybox mock-meta",
            version="0.1.0",
            path="/api",
            render_plugins=[SwaggerRenderPlugin()],
        ),
    )
