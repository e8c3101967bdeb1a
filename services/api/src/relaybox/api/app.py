"""The Litestar application factory."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsPlugin
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from relaybox.api.auth import check_secret, jwt_auth
from relaybox.api.chat import chat_router
from relaybox.api.conversations.controller import ConversationController
from relaybox.api.deadletters.controller import DeadLetterController
from relaybox.api.emails.accept import EmailIntake
from relaybox.api.emails.controller import EmailController
from relaybox.api.errors import ApiError, http_problem, internal_error, to_problem
from relaybox.api.health import health, metrics, ready
from relaybox.api.mailings.controller import mailings_router
from relaybox.api.messages.controller import MessageController
from relaybox.api.middleware import access_policy_middleware, echo_request_id, edge_middleware
from relaybox.api.openapi import ContractPlugin, RequestModelSchemaPlugin
from relaybox.api.ratelimit import FixedWindowLimiter
from relaybox.api.settings import ApiSettings
from relaybox.api.webhooks.controller import MetaWebhookController
from relaybox.api.webhooks.push import PushWebhookController
from relaybox.api.webhooks.service import WebhookIntake
from relaybox.common.db.session import create_engine, dispose, session_factory
from relaybox.common.observability.tracing import configure_tracing

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


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
                await dispose(db_engine)

    async def provide_session() -> AsyncGenerator[AsyncSession, None]:
        async with sessions() as session:
            yield session

    email_intake = EmailIntake(db_engine, settings.email_from, settings.idempotency_ttl_h)
    webhook_intake = WebhookIntake(
        db_engine, settings.meta, timedelta(hours=settings.webhook_event_retention_h)
    )
    auth = jwt_auth(settings)
    limiter = FixedWindowLimiter(settings.rate_limit.send_per_minute)
    request_spans = settings.tracing.request_spans
    # Without request spans, the edge middleware gives each request its trace context.
    edge = edge_middleware(trace_context=not request_spans)

    def on_app_init(config: AppConfig) -> AppConfig:
        config = auth.on_app_init(config)  # puts the JWT middleware first
        config.middleware.remove(edge)  # the edge wraps even a 401
        config.middleware.insert(0, edge)
        return config

    return Litestar(
        logging_config=None,  # relaybox.common.observability.logging owns the root logger
        route_handlers=[
            health,
            ready,
            metrics,
            EmailController,
            ConversationController,
            MessageController,
            MetaWebhookController,
            PushWebhookController,
            DeadLetterController,
            mailings_router(settings),
            chat_router(),
        ],
        lifespan=[lifespan],
        state=State({"engine": db_engine}),
        on_app_init=[on_app_init],
        dependencies={
            "db_session": Provide(provide_session),
            "email_intake": Provide(lambda: email_intake, sync_to_thread=False),
            "webhook_intake": Provide(lambda: webhook_intake, sync_to_thread=False),
            "settings": Provide(lambda: settings, sync_to_thread=False),
            "clock": Provide(lambda: clock, sync_to_thread=False),
        },
        middleware=[edge, access_policy_middleware(limiter)],  # around the JWT middleware
        before_send=[echo_request_id],
        request_max_body_size=settings.max_body_bytes,  # the mailings router allows its uploads
        plugins=[
            ContractPlugin(),
            RequestModelSchemaPlugin(prefer_alias=True),
            ProblemDetailsPlugin(
                ProblemDetailsConfig(
                    exception_to_problem_detail_map={
                        HTTPException: http_problem,
                        ApiError: to_problem,
                    }
                )
            ),
            *([OpenTelemetryPlugin(OpenTelemetryConfig())] if request_spans else []),
        ],
        exception_handlers={HTTP_500_INTERNAL_SERVER_ERROR: internal_error},
        openapi_config=OpenAPIConfig(
            title="relaybox",
            version="0.1.0",
            description="Reliable messaging: transactional outbox on PostgreSQL + RabbitMQ.",
            path="/api",
            render_plugins=[SwaggerRenderPlugin(path="/")],
        ),
        debug=False,
    )
