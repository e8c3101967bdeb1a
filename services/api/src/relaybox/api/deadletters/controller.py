"""Operators' dead-letter endpoints (scope `admin`): thin handlers over `office`."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import ADMIN_SCOPE, requires
from relaybox.api.deadletters import office
from relaybox.api.deadletters.schemas import (
    DATE_OR_DATETIME,
    DeadLetterItem,
    DeadLetterPage,
    DeadLetterStatus,
    DiscardReport,
    ReplayReport,
    Route,
    Selection,
)
from relaybox.api.openapi import problems
from relaybox.common.observability.logging import request_id_var

ADMIN = requires(ADMIN_SCOPE)


class DeadLetterController(Controller):
    """Messages that died (drained from the DLQs by the consumer): inspect, replay, discard."""

    path = "/admin/dead-letters"
    tags = ["admin"]

    @get("/", opt=ADMIN, summary="Dead letters, the most recent death first")
    async def list_all(
        self,
        db_session: NamedDependency[AsyncSession],
        route: Annotated[Route | None, QueryParameter()] = None,
        status: Annotated[DeadLetterStatus | None, QueryParameter()] = None,
        since: Annotated[
            str | None,
            QueryParameter(
                max_length=64,
                description="died (last) at or after this date (UTC) or date-time",
                schema_extra=DATE_OR_DATETIME,
            ),
        ] = None,
        page: Annotated[int, QueryParameter(ge=1, le=100_000)] = 1,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        cursor: Annotated[
            str | None,
            QueryParameter(max_length=512, description="the `nextCursor` of the previous page"),
        ] = None,
    ) -> DeadLetterPage:
        return await office.list_dead_letters(
            db_session,
            route=route,
            status=status,
            since=since,
            page=page,
            limit=limit,
            cursor=cursor,
        )

    @get("/{letter_id:uuid}", opt=ADMIN, summary="One dead letter")
    async def get_one(
        self, db_session: NamedDependency[AsyncSession], letter_id: FromPath[uuid.UUID]
    ) -> DeadLetterItem:
        return await office.get_dead_letter(db_session, letter_id)

    @post(
        "/replay",
        opt=ADMIN,
        status_code=200,
        responses=problems(409),
        summary="Replay dead letters: their rows back where a retry starts, through the outbox",
        description="By `ids`, or by a filter over the open ones (`route`, `since`). Each "
        "replayed letter's row (email, Meta message, chat copies, mailing parse) is put back "
        "where a retry starts and a new outbox row is written, in one transaction. A letter "
        "whose row is already final (SENT, DELIVERED, READ), or that was already replayed or "
        "discarded, is refused with the reason. 409 when `ids` were given and none could be "
        "replayed.",
    )
    async def replay(
        self, db_session: NamedDependency[AsyncSession], data: JSONBody[Selection]
    ) -> ReplayReport:
        return await office.replay(db_session, data, request_id_var.get())

    @post(
        "/discard",
        opt=ADMIN,
        status_code=200,
        responses=problems(409),
        summary="Discard dead letters (kept, marked discarded; never replayed)",
        description="By `ids`, or by a filter over the open ones (`route`, `since`). 409 when "
        "`ids` were given and none was open.",
    )
    async def discard(
        self, db_session: NamedDependency[AsyncSession], data: JSONBody[Selection]
    ) -> DiscardReport:
        return await office.discard(db_session, data)
