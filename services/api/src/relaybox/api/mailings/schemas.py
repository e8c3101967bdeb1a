"""Request and response shapes of the mailing endpoints."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import msgspec
from litestar.datastructures import UploadFile

from relaybox.api.fields import SINGLE_LINE
from relaybox.common.mailings.rules import TOKEN_PLACEHOLDER

MAX_SUBJECT = 255
MAX_BODY = 10_000
MailingStatus = Literal["PARSING", "RUNNING", "PAUSED", "COMPLETED", "CANCELLED", "FAILED"]
EntryStatus = Literal["PENDING", "SENT", "FAILED", "CANCELLED"]


@dataclass
class MailingUpload:
    """POST /mailings multipart form: the CSV `file` (required); `subject` and `body` (a template
    holding `{token}`) default to the settings' when absent or empty.

    `file` is optional in the signature only: Litestar would report a missing part as a missing
    JSON `body`, so the service answers it, naming `file`.
    """

    file: UploadFile | None = None
    subject: str | None = None
    body: str | None = None


# The form as the document states it: what `relaybox.api.mailings.upload.inspect` checks.
UPLOAD_FORM_SCHEMA: dict[str, Any] = {
    "required": ["file"],
    "properties": {
        "file": {
            "type": "string",
            "format": "binary",
            "contentMediaType": "text/csv",
            "description": "the mailing list: CSV (UTF-8, UTF-8 with BOM or Latin-1) with an "
            "`email` column, or one column of addresses without a header",
        },
        "subject": {
            "type": "string",
            "maxLength": MAX_SUBJECT,
            "pattern": f"^$|{SINGLE_LINE.pattern}",
            "description": "one line; empty or absent: the configured default",
        },
        "body": {
            "type": "string",
            "maxLength": MAX_BODY,
            "pattern": "^$|^[^\\x00]*" + re.escape(TOKEN_PLACEHOLDER) + "[^\\x00]*$",
            "description": f"the text, holding {TOKEN_PLACEHOLDER} (each recipient's token); "
            "empty or absent: the configured default",
        },
    },
}


class MailingCounts(msgspec.Struct):
    """`rows`..`duplicates` come from the parser; the rest from the recipients' email rows."""

    rows: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    pending: int = 0
    sent: int = 0
    failed: int = 0
    cancelled: int = 0


class MailingLinks(msgspec.Struct):
    self_: str = msgspec.field(name="self")
    entries: str
    errors: str


class MailingDetail(msgspec.Struct, rename="camel"):
    """One mailing. `progress` = (sent + failed + cancelled) / valid; `eta`/`etaSeconds` are
    set while RUNNING: the pending recipients at the provider's rate."""

    id: uuid.UUID
    status: MailingStatus
    subject: str
    file_name: str | None
    file_bytes: int
    file_sha256: str
    counts: MailingCounts
    progress: float | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    eta: datetime | None
    eta_seconds: int | None
    links: MailingLinks


class MailingPageMeta(msgspec.Struct, rename="camel"):
    page: int
    limit: int
    total: int
    next_cursor: str | None


class MailingPage(msgspec.Struct):
    data: list[MailingDetail]
    meta: MailingPageMeta


class CursorMeta(msgspec.Struct, rename="camel"):
    limit: int
    next_cursor: str | None


class MailingEntry(msgspec.Struct, rename="camel"):
    """One recipient and its delivery; never its token (nor the token's hash)."""

    row_number: int
    email: str
    status: EntryStatus
    sent_at: datetime | None
    failed_at: datetime | None
    error: str | None


class MailingEntryPage(msgspec.Struct):
    data: list[MailingEntry]
    meta: CursorMeta


class MailingErrorItem(msgspec.Struct, rename="camel"):
    """An invalid row of the file: its number, the raw value and why it was refused."""

    row_number: int
    value: str
    reason: str


class MailingErrorPage(msgspec.Struct):
    data: list[MailingErrorItem]
    meta: CursorMeta
