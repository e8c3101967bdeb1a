"""Request and response shapes of the dead-letter endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, model_validator

from relaybox.common.db.models import DeadLetter
from relaybox.common.messaging.topology import ROUTES

DeadLetterStatus = Literal["open", "replayed", "discarded"]
Route = Literal["email.send", "meta.send", "mailing.parse", "chat.deliver"]
assert set(Route.__args__) == set(ROUTES)  # type: ignore[attr-defined]  # one list of routes
Outcome = Literal["replayed", "discarded", "refused"]
MAX_SELECTION = 1000
DATE_OR_DATETIME: dict[str, Any] = {"anyOf": [{"format": "date"}, {"format": "date-time"}]}


def _given(name: str, kind: str) -> dict[str, Any]:
    """JSON Schema: `name` is present and not null."""
    return {"required": [name], "properties": {name: {"type": kind}}}


class DeadLetterItem(msgspec.Struct, rename="camel"):
    """A message that died: what it carried, why it died, and what was done with it."""

    id: uuid.UUID
    route: str
    status: DeadLetterStatus
    row_id: str | None
    payload: dict[str, Any]
    headers: dict[str, Any]
    last_error: str | None
    attempts: int
    count: int
    first_seen_at: datetime
    last_seen_at: datetime
    replayed_at: datetime | None
    discarded_at: datetime | None


def item_of(row: DeadLetter) -> DeadLetterItem:
    return DeadLetterItem(
        id=row.id,
        route=row.route,
        status=row.status,  # type: ignore[arg-type]  # the table's check constraint
        row_id=row.row_id,
        payload=row.payload,
        headers=row.headers,
        last_error=row.last_error,
        attempts=row.attempts,
        count=row.count,
        first_seen_at=row.first_seen_at,
        last_seen_at=row.last_seen_at,
        replayed_at=row.replayed_at,
        discarded_at=row.discarded_at,
    )


class PageMeta(msgspec.Struct, rename="camel"):
    page: int
    limit: int
    total: int
    next_cursor: str | None


class DeadLetterPage(msgspec.Struct):
    """GET /admin/dead-letters: the most recent deaths first."""

    data: list[DeadLetterItem]
    meta: PageMeta


class Selection(BaseModel):
    """Which dead letters: `ids`, or a filter over the open ones (`route`, `since`: died at or
    after), the oldest first, at most `limit` of them."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                _given("ids", "array"),
                {"anyOf": [_given("route", "string"), _given("since", "string")]},
            ]
        },
    )

    ids: list[uuid.UUID] | None = Field(
        default=None, min_length=1, max_length=MAX_SELECTION, description="dead letter ids"
    )
    route: Route | None = Field(default=None, description="filter: the route they died on")
    since: str | None = Field(
        default=None,
        max_length=64,
        description="filter: died (last) at or after this date (UTC) or date-time",
        json_schema_extra={
            "anyOf": [
                {"type": "string", "maxLength": 64, "format": "date"},
                {"type": "string", "maxLength": 64, "format": "date-time"},
                {"type": "null"},
            ]
        },
    )
    limit: int = Field(
        default=MAX_SELECTION, ge=1, le=MAX_SELECTION, description="with a filter: how many"
    )

    @model_validator(mode="after")
    def _ids_or_filter(self) -> Selection:
        by_filter = self.route is not None or self.since is not None
        if (self.ids is not None) == by_filter:
            raise ValueError("give either `ids` or a filter (`route` and/or `since`), not both")
        return self


class Result(msgspec.Struct):
    """What happened to one selected dead letter; `reason` says why it was refused."""

    id: uuid.UUID
    outcome: Outcome
    reason: str | None = None


class ReplayReport(msgspec.Struct):
    replayed: int
    results: list[Result]
    more: bool  # a filter matched more than `limit`: call again


class DiscardReport(msgspec.Struct):
    discarded: int
    results: list[Result]
    more: bool
