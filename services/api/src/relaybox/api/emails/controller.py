"""Email endpoints: thin handlers that validate and call the accept path and the log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client, requires
from relaybox.api.emails import accept, log
from relaybox.api.emails.query import LogQuery, parse_bound
from relaybox.api.emails.schemas import (
    Accepted,
    EmailDetail,
    EmailLogPage,
    EmailStatus,
    SendEmailRequest,
)
from relaybox.api.idempotency import IdempotencyKey, validate_key
from relaybox.api.settings import ApiSettings
from relaybox.common.observability.logging import request_id_var


def _bound(name: str, description: str) -> Any:
    """A `from`/`to` filter: a date (a whole day in the configured timezone) or a date-time
    (checked by `query.parse_bound`)."""
    return QueryParameter(
        name=name,
        description=f"{description}: a date (YYYY-MM-DD, in the configured timezone) or a "
        "date-time",
        schema_extra={"anyOf": [{"format": "date"}, {"format": "date-time"}]},
    )


class EmailController(Controller):
    """POST /send (alias /email/send), the delivery log and single emails."""

    tags = ["email"]

    @post(
        ["/send", "/email/send"],
        status_code=202,
        summary="Queue an email",
        description="Writes the email (PENDING) and its outbox row in one transaction. "
        "Honours Idempotency-Key.",
        opt=requires("email:send", rate_limited=True),
    )
    async def send(
        self,
        request: Request[Client, Any, State],
        data: JSONBody[SendEmailRequest],
        email_intake: NamedDependency[accept.EmailIntake],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Accepted]:
        stored = await email_intake.accept(
            client=request.user,
            request=data,
            key=validate_key(idempotency_key),
            correlation_id=request_id_var.get(),
        )
        return Response(stored.body, status_code=stored.status_code)  # type: ignore[arg-type]

    @get(
        ["/logs/email", "/email/logs"],
        opt=requires("email:read"),
        summary="The email delivery log, newest first, with today's totals",
    )
    async def logs(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        clock: NamedDependency[Any],
        page: Annotated[int, QueryParameter(ge=1, le=100_000)] = 1,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
        status: Annotated[EmailStatus | None, QueryParameter()] = None,
        since: Annotated[str | None, _bound("from", "from this instant or day on")] = None,
        until: Annotated[str | None, _bound("to", "before this instant, or up to this day")] = None,
    ) -> EmailLogPage:
        zone = ZoneInfo(settings.timezone)
        wanted = LogQuery(
            page=page,
            limit=limit,
            status=status,
            since=parse_bound(since, "from", zone, end=False),
            until=parse_bound(until, "to", zone, end=True),
            cursor=cursor,
        )
        now: datetime = clock()
        return await log.email_log(db_session, request.user, wanted, zone=zone, now=now)

    @get("/emails/{email_id:uuid}", opt=requires("email:read"), summary="One email")
    async def get_one(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        email_id: FromPath[uuid.UUID],
    ) -> EmailDetail:
        return await log.get_email(db_session, request.user, email_id)
