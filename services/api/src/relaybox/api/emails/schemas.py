"""Request and response shapes of the email endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import msgspec
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

MAX_BODY = 10_000
_CONTROL = {chr(c) for c in (*range(0x20), 0x7F)}
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
    html: str | None = Field(default=None, min_length=1, max_length=MAX_BODY, validate_default=True)
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
        if _CONTROL.intersection(value):
            raise ValueError("subject must not contain control characters")
        return value

    @field_validator("text", "html")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("html")
    @classmethod
    def _has_body(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Runs even when `html` is absent (validate_default); names the field at fault."""
        if value is None and "text" in info.data and info.data["text"] is None:
            raise ValueError("at least one of 'text' and 'html' is required")
        return value


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
