"""The Litestar application factory."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from litestar import Litestar, Request, Response
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware.rate_limit import RateLimitConfig, get_remote_address
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsPlugin
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from relaybox.api.auth import Client, check_secret, jwt_auth
from relaybox.api.emails.controller import EmailController
from relaybox.api.errors import ApiError, to_problem
from relaybox.api.health import health, ready
from relaybox.api.middleware import request_id_middleware
from relaybox.api.settings import ApiSettings
from relaybox.common.db.session import create_engine, session_factory
from relaybox.common.observability.tracing import configure_tracing

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _client_or_address(request: Request[Any, Any, Any]) -> str:
    user = request.scope.get("user")
    return f"client:{user.id}" if isinstance(user, Client) else get_remote_address(request)


def _rate_limit(settings: ApiSettings) -> RateLimitConfig:
    """Per-client limit, applied only to handlers marked `opt={"rate_limited": True}`."""
    return RateLimitConfig(
        rate_limit=("minute", settings.rate_limit.send_per_minute),
        identifier_for_request=_client_or_address,
        check_throttle_handler=lambda request: bool(request.route_handler.opt.get("rate_limited")),
    )


def _api_error_handler(request: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    return to_problem(exc).to_response(request)


def create_app(
    settings: ApiSettings, *, engine: AsyncEngine | None = None, clock: Clock = _utcnow
) -> Litestar:
    """Build the API. Pass `engine` to share one (tests); otherwise the app owns its own."""
    check_secret(settings)
    configure_tracing("api")
    owned = engine is None
    db_engine = engine or create_engine(settings.database)
    sessions = session_factory(db_engine)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if owned:
                await db_engine.dispose()

    async def provide_session() -> AsyncGenerator[AsyncSession, None]:
        async with sessions() as session:
            yield session

    prometheus = PrometheusConfig(
        app_name="relaybox_api", prefix="relaybox_api", exclude=["/metrics"], group_path=True
    )
    auth = jwt_auth(settings)

    def on_app_init(config: AppConfig) -> AppConfig:
        return auth.on_app_init(config)

    return Litestar(
        route_handlers=[health, ready, PrometheusController, EmailController],
        lifespan=[lifespan],
        state=State({"engine": db_engine}),
        on_app_init=[on_app_init],
        dependencies={
            "db_session": Provide(provide_session),
            "settings": Provide(lambda: settings, sync_to_thread=False),
            "clock": Provide(lambda: clock, sync_to_thread=False),
        },
        middleware=[request_id_middleware, prometheus.middleware, _rate_limit(settings).middleware],
        plugins=[
            ProblemDetailsPlugin(ProblemDetailsConfig(enable_for_all_http_exceptions=True)),
            OpenTelemetryPlugin(OpenTelemetryConfig()),
        ],
        exception_handlers={ApiError: _api_error_handler},
        openapi_config=OpenAPIConfig(
            title="relaybox",
            version="0.1.0",
            description="Reliable messaging: transactional outbox on PostgreSQL + RabbitMQ.",
            path="/api",
            render_plugins=[SwaggerRenderPlugin(path="/")],
        ),
        debug=False,
    )
