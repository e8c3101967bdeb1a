"""HTTP routes under /email-api: the contract's token, send and health routes, and /_mock."""

from __future__ import annotations

import asyncio
from typing import Annotated

from litestar import Controller, Response, Router, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, QueryParameter, RawBody

from relaybox.mock_meta.email_api.mock import Answer, Body, EmailApiMock
from relaybox.mock_meta.email_api.models import (
    EmailApiConfig,
    EmailApiConfigPatch,
    EmailApiHealth,
    EmailApiStats,
    EmailRecordList,
    ErrorDetail,
    ValidationErrors,
)

EmailApiDependency = NamedDependency[EmailApiMock]
PREFIX = "/email-api"
BEARER_SCHEME = "HTTPBearer"
_TOKEN_ERRORS = {
    401: ResponseSpec(data_container=ErrorDetail, description="Invalid credentials"),
    422: ResponseSpec(data_container=ValidationErrors, description="missing or malformed field"),
}
_SEND_ERRORS = {
    400: "invalid address, empty or too long subject or body (or simulated)",
    401: "missing, invalid, expired or revoked token (or simulated)",
    429: "rate limit exceeded (or simulated); carries Retry-After (seconds)",
    500: "simulated failure",
    502: "simulated failure",
    503: "simulated failure",
}


def _respond(answer: Answer) -> Response[Body]:
    return Response(answer.body, status_code=answer.status_code, headers=answer.headers)


class EmailApiController(Controller):
    """The provider API of ../shared/contracts/email-api.openapi.json."""

    path = "/"
    tags = ["email api"]

    @post("/auth/token", status_code=200, responses=_TOKEN_ERRORS)
    async def create_token(self, email_api: EmailApiDependency, body: RawBody) -> Response[Body]:
        """Exchange `{username, password}` for a bearer token valid `expires_in` seconds."""
        return _respond(email_api.issue_token(body))

    @post(
        "/send-email",
        status_code=202,
        security=[{BEARER_SCHEME: []}],
        responses={
            **{
                code: ResponseSpec(data_container=ErrorDetail, description=text)
                for code, text in _SEND_ERRORS.items()
            },
            422: ResponseSpec(data_container=ValidationErrors, description="missing/wrong field"),
        },
    )
    async def send_email(
        self,
        email_api: EmailApiDependency,
        body: RawBody,
        authorization: Annotated[
            str | None, HeaderParameter(name="Authorization", required=False)
        ] = None,
        idempotency_key: Annotated[
            str | None, HeaderParameter(name="Idempotency-Key", required=False)
        ] = None,
    ) -> Response[Body]:
        """Queue `{to, subject, body}`; decided on arrival, answered after the configured delay.
        An `Idempotency-Key` is recorded (the ledger counts calls per key), never de-duplicated."""
        delay_s = email_api.config.delay_ms / 1000
        answer = email_api.send(authorization, body, idempotency_key)
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        return _respond(answer)

    @get("/health")
    async def health(self, email_api: EmailApiDependency) -> EmailApiHealth:
        """Status, timestamp and version."""
        return email_api.health()


class EmailApiMockController(Controller):
    """The switches and records a test uses to steer and inspect the email API."""

    path = "/_mock"
    tags = ["email api mock"]

    @get("/config")
    async def get_config(self, email_api: EmailApiDependency) -> EmailApiConfig:
        """The current behaviour switches."""
        return email_api.config

    @post("/config", status_code=200)
    async def set_config(
        self, email_api: EmailApiDependency, data: JSONBody[EmailApiConfigPatch]
    ) -> EmailApiConfig:
        """Merge the given switches into the config; `revokeTokens: true` invalidates tokens."""
        return email_api.configure(data)

    @get("/messages")
    async def list_messages(
        self,
        email_api: EmailApiDependency,
        to: Annotated[str | None, QueryParameter(description="recipient, case-insensitive")] = None,
    ) -> EmailRecordList:
        """Accepted emails in arrival order, optionally for one recipient."""
        found = email_api.messages(to)
        return EmailRecordList(data=found, total=len(found))

    @delete("/messages")
    async def reset(self, email_api: EmailApiDependency) -> None:
        """Forget accepted emails and zero the stats and rate windows (config and tokens stay)."""
        email_api.reset()

    @get("/stats")
    async def get_stats(self, email_api: EmailApiDependency) -> EmailApiStats:
        """Counters since start or the last reset."""
        return email_api.stats_snapshot()


def build_email_api_router(email_api: EmailApiMock) -> Router:
    """The /email-api routes bound to one mock."""

    def provide_email_api() -> EmailApiMock:
        return email_api

    return Router(
        path=PREFIX,
        route_handlers=[EmailApiController, EmailApiMockController],
        dependencies={"email_api": Provide(provide_email_api, sync_to_thread=False)},
    )
