"""Request and response shapes of the email endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from relaybox.api.fields import NO_NUL, SINGLE_LINE
from relaybox.common.addresses import normalize as normalize_address

MAX_BODY = 10_000
MAX_ADDRESS = 254  # the longest address email-validator accepts (RFC 5321's path limit)
EmailStatus = Literal["PENDING", "SENDING", "SENT", "FAILED"]
BODY_FIELDS = ("text", "body", "html")


def _given(*names: str) -> dict[str, Any]:
    """JSON Schema: each of `names` is present and not null."""
    return {"required": list(names), "properties": {name: {"type": "string"} for name in names}}


# At least one of `text` (or its alias `body`) and `html` not null (said as "not all of them
# null or absent"); `text` and `body` not both.
_SEND_RULES: dict[str, Any] = {
    "allOf": [
        {"not": {"properties": {name: {"type": "null"} for name in BODY_FIELDS}}},
        {"not": _given("text", "body")},
    ]
}


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c}]" for c in word)


# What email-validator accepts beyond JSON Schema's `email` format: a dot in the domain, and no
# special-use domain (RFC 6761) at its end.
_ADDRESS: dict[str, Any] = {
    "format": "email",
    "pattern": "^[^@]+@[^@]+[.][^@.]+$",
    "not": {
        "type": "string",
        "pattern": "[@.](" + "|".join(_any_case(n) for n in SPECIAL_USE_DOMAIN_NAMES) + ")$",
    },
}


def _address(value: str) -> str:
    # Plain addresses (most) without email-validator's general machinery: a fifth of a
    # POST /send's Python. The fast path vouches only for what email-validator accepts too.
    if (plain := normalize_address(value)) is not None:
        return plain
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None


def _body_field(description: str, **extra: Any) -> Any:
    return Field(
        default=None,
        min_length=1,
        max_length=MAX_BODY,
        description=description,
        json_schema_extra=NO_NUL.schema(),
        **extra,
    )


class SendEmailRequest(BaseModel):
    """POST /send body: `to`, `subject` and at least one of `text` (or its alias `body`, as the
    email HTTP API and common clients name it) and `html`."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        str_strip_whitespace=False,
        json_schema_extra=_SEND_RULES,
    )

    to: str = Field(
        max_length=MAX_ADDRESS, examples=["user@example.com"], json_schema_extra=_ADDRESS
    )
    subject: str = Field(min_length=1, max_length=255, json_schema_extra=SINGLE_LINE.schema())
    text: str | None = _body_field("the plain-text body")
    body: str | None = _body_field("an alias of `text` (give one of them)", exclude=True)
    html: str | None = _body_field("the HTML body", validate_default=True)
    from_: str | None = Field(
        default=None,
        alias="from",
        max_length=MAX_ADDRESS,
        description="the sender; the configured default when absent",
        json_schema_extra=_ADDRESS,
    )

    @field_validator("to", "from_")
    @classmethod
    def _valid_address(cls, value: str | None) -> str | None:
        return None if value is None else _address(value)

    @field_validator("subject")
    @classmethod
    def _single_line(cls, value: str) -> str:
        return SINGLE_LINE.check(value)

    @field_validator("text", "body", "html")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        return None if value is None else NO_NUL.check(value)

    @field_validator("body")
    @classmethod
    def _alias_alone(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("text") is not None:
            raise ValueError("give 'text' or its alias 'body', not both")
        return value

    @field_validator("html")
    @classmethod
    def _has_body(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Runs even when `html` is absent (validate_default); names the field at fault."""
        given = [info.data.get(name) for name in ("text", "body")]
        # (`text` or `body` missing from info.data: it failed already; no second error)
        if value is None and given == [None, None] and {"text", "body"} <= info.data.keys():
            raise ValueError("at least one of 'text' (or its alias 'body') and 'html' is required")
        return value

    @model_validator(mode="after")
    def _body_is_text(self) -> SendEmailRequest:
        """`body` is `text` under another name: the service reads `text`."""
        if self.body is not None:
            self.text, self.body = self.body, None
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
