"""The uploaded CSV before it is stored: the form's checks, a quick sniff, size and sha256.

Every check here runs before the first write, so a refused upload leaves nothing behind. The
file itself is only ever read in bounded pieces (a 64 KiB sample, then `chunk_bytes` at a time).

The sniff applies the parser's rules (relaybox.common.mailings.csv_stream) to the sample:
- encoding: UTF-8 (a leading BOM is dropped), else Latin-1; UTF-16 and binary data are refused;
- comma-separated; the first non-blank record is a header when one of its cells is `email`
  (trimmed, any case); else it must have one column (trailing empty cells not counted): a
  headerless list of addresses.
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass
from typing import Any

from litestar.datastructures import UploadFile

from relaybox.api.errors import ApiError
from relaybox.api.fields import SINGLE_LINE
from relaybox.api.mailings.schemas import MAX_BODY, MAX_SUBJECT, MailingUpload
from relaybox.api.settings import MailingSettings
from relaybox.api.uploads import (
    CONTROL_CHARACTERS,
    UnsupportedMediaTypeError,
    chunks,
    clean_file_name,
    measure,
)
from relaybox.common.mailings.csv_stream import UTF8_BOM, columns, email_column, layout_error
from relaybox.common.mailings.rules import TOKEN_PLACEHOLDER

SNIFF_BYTES = 64 * 1024
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_TEXT_CONTROLS = set("\t\n\r\f\v\x1a")  # \x1a: the DOS end-of-file mark some exports append
_BINARY_CONTROLS = CONTROL_CHARACTERS - _TEXT_CONTROLS
MAX_CONTROL_SHARE = 0.01  # more control characters than this (in the sample) is not text


@dataclass(frozen=True)
class CheckedUpload:
    """A form that passed every check: its file measured, subject and body resolved."""

    file: UploadFile
    file_name: str | None
    subject: str
    body: str
    sha256: str
    size: int

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the request for Idempotency-Key (the file by its digest)."""
        return {
            "fileSha256": self.sha256,
            "fileName": self.file_name,
            "subject": self.subject,
            "body": self.body,
        }


async def inspect(form: MailingUpload, settings: MailingSettings) -> CheckedUpload:
    """Check the form, sniff the file, then read it once for its size and sha256.

    400 names the part at fault (`file`, `subject`, `body`); 415 is a file that is not text;
    413 a file larger than `max_file_bytes`.
    """
    if not isinstance(form.file, UploadFile):
        raise ApiError("a CSV file is required in the multipart part 'file'", field="file")
    subject = check_subject(form.subject or settings.default_subject)
    body = check_body(form.body or settings.default_body)
    await form.file.seek(0)
    sample = await form.file.read(SNIFF_BYTES)
    complete = not await form.file.read(1)
    sniff(sample, complete=complete)
    sha256, size = await measure(
        chunks(form.file, settings.chunk_bytes), max_bytes=settings.max_file_bytes
    )
    return CheckedUpload(
        file=form.file,
        file_name=clean_file_name(form.file.filename),
        subject=subject,
        body=body,
        sha256=sha256,
        size=size,
    )


def check_subject(value: str) -> str:
    if len(value) > MAX_SUBJECT:
        raise ApiError(f"subject must be at most {MAX_SUBJECT} characters", field="subject")
    if not SINGLE_LINE.matches(value):
        raise ApiError(f"subject {SINGLE_LINE.message}", field="subject")
    return value


def check_body(value: str) -> str:
    if TOKEN_PLACEHOLDER not in value:
        raise ApiError(
            f"body must contain the placeholder {TOKEN_PLACEHOLDER} (each recipient's token)",
            field="body",
        )
    if len(value) > MAX_BODY:
        raise ApiError(f"body must be at most {MAX_BODY} characters", field="body")
    if "\x00" in value:
        raise ApiError("body must not contain NUL characters", field="body")
    return value


def decode_sample(sample: bytes, *, complete: bool) -> str:
    """The sample as text (UTF-8, UTF-8 with BOM, else Latin-1), or a 415 for anything else."""
    if sample.startswith(_UTF16_BOMS) and not sample.startswith(UTF8_BOM):
        raise UnsupportedMediaTypeError(
            "the file is UTF-16 encoded; save it as CSV in UTF-8", field="file"
        )
    if b"\x00" in sample:
        raise UnsupportedMediaTypeError(
            "the file is not a CSV text file (it contains binary data)", field="file"
        )
    data = sample.removeprefix(UTF8_BOM)
    decoder = codecs.getincrementaldecoder("utf-8")()  # a character cut by the sample's end
    try:
        text = decoder.decode(data, final=complete)
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    controls = sum(1 for c in text if c in _BINARY_CONTROLS)
    if controls > MAX_CONTROL_SHARE * len(text):
        raise UnsupportedMediaTypeError(
            "the file is not a CSV text file (it contains binary data)", field="file"
        )
    return text


def sniff(sample: bytes, *, complete: bool) -> None:
    """Refuse what is clearly not a mailing list: an empty file, not text, or several columns
    none of which is named `email`. `complete`: the sample is the whole file."""
    if not sample:
        raise ApiError("the file is empty", field="file")
    text = decode_sample(sample, complete=complete)
    if not complete and (end := text.rfind("\n")) > 0:
        text = text[: end + 1]  # whole lines only
    try:
        rows = (row for row in csv.reader(io.StringIO(text, newline="")) if columns(row))
        header = next(rows, None)
        if header is None:
            raise ApiError(
                "the file holds no rows"
                if complete
                else f"the first {SNIFF_BYTES} bytes of the file hold no CSV row",
                field="file",
            )
        if email_column(header) is not None:
            if complete and next(rows, None) is None:
                raise ApiError("the file has a header row but no addresses", field="file")
            return
    except csv.Error as exc:
        raise ApiError(f"the file is not valid CSV: {exc}", field="file") from None
    if (count := columns(header)) > 1:
        raise ApiError(layout_error("the first row", count), field="file")
