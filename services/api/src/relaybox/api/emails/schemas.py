"""Request and response shapes of the email endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import msgspec
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_BODY = 10_000
EmailStatus = Literal["PENDING", "SENDING", "SENT", "FAILED"]


def _address(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None


class SendEmailRequest(BaseModel):
    """POST /send body: at least one of `text` and `html`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=False)

    to: str = Field(max_length=320, examples=["user@example.com"])
    subject: str = Field(min_length=1, max_length=255)
    text: str | None = Field(default=None, min_length=1, max_length=MAX_BODY)
    html: str | None = Field(default=None, min_length=1, max_length=MAX_BODY)
    from_: str | None = Field(default=None, alias="from", max_length=320)

    @field_validator("to", "from_")
    @classmethod
    def _valid_address(cls, value: str | None) -> str | None:
        return None if value is None else _address(value)

    @field_validator("subject")
    @classmethod
    def _single_line(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("subject must not be blank")
        if "\r" in value or "\n" in value:
            raise ValueError("subject must be a single line")
        return value

    @model_validator(mode="after")
    def _has_body(self) -> SendEmailRequest:
        if self.text is None and self.html is None:
            raise ValueError("at least one of 'text' and 'html' is required")
        return self


class Accepted(msgspec.Struct, rename="camel"):
    """202 answer of POST /send."""

    id: uuid.UUID
    status: EmailStatus
    created_at: datetime


class EmailLogItem(msgspec.Struct, rename="camel"):
    id: uuid.UUID
    to: str
    from_: str = msgspec.field(name="from")
    subject: str
    status: EmailStatus
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    failed_at: datetime | None
    error: str | None


class EmailDetail(EmailLogItem, rename="camel"):
    text: str | None = None
    html: str | None = None
    provider_message_id: str | None = None
    updated_at: datetime | None = None


class PageMeta(msgspec.Struct, rename="camel"):
    page: int
    limit: int
    total: int
    next_cursor: str | None


class TodayStats(msgspec.Struct, rename="camel"):
    total: int
    sent: int
    failed: int
    pending: int
    date: str
    timezone: str


class Stats(msgspec.Struct):
    today: TodayStats


class EmailLogPage(msgspec.Struct):
    data: list[EmailLogItem]
    meta: PageMeta
    stats: Stats
