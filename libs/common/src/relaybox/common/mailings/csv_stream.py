"""The mailing-list CSV: the streaming parser (byte chunks in, (row number, address) out) and
the layout rules the API's upload check applies to a sample of the same file.

Memory stays constant: one chunk, one partial line and one csv record at a time; chunks may
split a character, a line or a quoted record anywhere.

Encoding: a UTF-8 BOM means UTF-8 (the BOM is dropped); otherwise UTF-8 is tried with an
incremental decoder and the file is read as Latin-1 if it is not valid UTF-8. Invalid UTF-8 in
the first chunk switches before anything is produced. Found later, the switch happens in place
when everything produced so far was ASCII (identical in both encodings); otherwise
`NotUtf8Error` asks the caller to parse again from the start with ``encoding=LATIN_1``.

Layout: the first non-blank record decides. A field equal to ``email`` (trimmed, any case)
makes it a header and that column holds the addresses; else a record with exactly one
(non-empty) column means a headerless single-column file whose every row is an address;
anything else is a `CsvFormatError`.

Row numbers are the ones a spreadsheet shows: the 1-based position of the record in the file,
the header row (if any) being row 1, and blank lines counted (a spreadsheet shows them as empty
rows) though they produce nothing. A quoted value spanning several lines is one row. A row
whose email cell is empty while other cells are not is produced with the value ``""``.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import itertools
from collections.abc import Callable, Iterable, Iterator

from relaybox.common.errors import RelayboxError

UTF8_BOM = codecs.BOM_UTF8
LATIN_1 = "latin-1"
EMAIL_HEADER = "email"
MAX_LINE_CHARS = 1 << 20  # a line longer than this (no line break in 1 Mi characters) is refused

Row = tuple[int, str]


class CsvFormatError(RelayboxError):
    """The upload cannot be read as a mailing list; the message is shown to the user."""


class NotUtf8Error(RelayboxError):
    """Invalid UTF-8 after non-ASCII text was produced: parse again with ``encoding=LATIN_1``."""


def decode(chunks: Iterable[bytes], encoding: str | None = None) -> Iterator[str]:
    """Decode byte chunks incrementally: UTF-8 (BOM dropped), else Latin-1 (see the module doc).

    ``encoding=LATIN_1`` forces Latin-1 (a leading UTF-8 BOM is still dropped).
    """
    source = iter(chunks)
    head = b""
    for chunk in source:  # enough bytes to see a BOM (a chunk may be tiny)
        head += chunk
        if len(head) >= len(UTF8_BOM):
            break
    if head.startswith(UTF8_BOM):
        head = head[len(UTF8_BOM) :]
    if encoding is not None:
        if codecs.lookup(encoding).name != codecs.lookup(LATIN_1).name:
            raise ValueError(f"unsupported forced encoding {encoding!r}")
        yield head.decode(LATIN_1)
        for chunk in source:
            yield chunk.decode(LATIN_1)
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    ascii_only = True
    for data in itertools.chain([head], source, [None]):  # None: the end, flush the decoder
        buffered = decoder.getstate()[0]
        try:
            text = decoder.decode(data or b"", final=data is None)
        except UnicodeDecodeError:
            if not ascii_only:
                raise NotUtf8Error("invalid UTF-8 after non-ASCII text") from None
            # All output so far was ASCII, which Latin-1 reads the same: switch in place.
            yield (buffered + (data or b"")).decode(LATIN_1)
            for chunk in source:
                yield chunk.decode(LATIN_1)
            return
        if text:
            ascii_only = ascii_only and text.isascii()
            yield text


def lines(texts: Iterable[str]) -> Iterator[str]:
    """Split text pieces into lines that keep their ending (``\\n``, ``\\r\\n`` or ``\\r``).

    This is what `csv.reader` expects (a file opened with ``newline=""``): it joins the lines of
    a quoted value that spans several of them.
    """
    pending = ""
    for piece in texts:
        text = pending + piece if pending else piece
        # A final "\r" may be the first half of a "\r\n" split across pieces: keep it back.
        end = len(text) - 1 if text.endswith("\r") else len(text)
        cut = max(text.rfind("\n", 0, end), text.rfind("\r", 0, end)) + 1
        if cut:
            yield from io.StringIO(text[:cut], newline="")
        pending = text[cut:]
        if len(pending) > MAX_LINE_CHARS:
            raise CsvFormatError(f"a line is longer than {MAX_LINE_CHARS:,} characters")
    if pending:
        yield from io.StringIO(pending, newline="")


def columns(record: list[str]) -> int:
    """How many columns a record has, trailing empty cells not counted."""
    count = len(record)
    while count and not record[count - 1].strip():
        count -= 1
    return count


def email_column(record: list[str]) -> int | None:
    """The index of the cell named `email` (trimmed, any case) when `record` is a header."""
    names = [field.strip().lower() for field in record]
    return names.index(EMAIL_HEADER) if EMAIL_HEADER in names else None


def layout_error(where: str, count: int) -> str:
    """Why a first record (`where`: "row 3") of `count` columns, none named `email`, is not a
    mailing list."""
    return (
        f"{where} has {count} columns and none is named '{EMAIL_HEADER}': name the "
        f"address column '{EMAIL_HEADER}' in a header row, or upload a single column of addresses"
    )


def iter_rows(chunks: Iterable[bytes], *, encoding: str | None = None) -> Iterator[Row]:
    """Every data row of the file as (row number, trimmed address), blank rows skipped."""
    reader = csv.reader(lines(decode(chunks, encoding)))
    number = 0
    with _csv_errors(lambda: number + 1):
        for record in reader:
            number += 1
            count = columns(record)
            if not count:
                continue  # a blank row before the first one
            if (column := email_column(record)) is not None:
                yield from _data_rows(reader, number, column)
            elif count == 1:
                yield (number, record[0].strip())
                yield from _single_column_rows(reader, number)
            else:
                raise CsvFormatError(layout_error(f"row {number}", count))
            return


@contextlib.contextmanager
def _csv_errors(row: Callable[[], int]) -> Iterator[None]:
    """A `csv.Error` (e.g. a quoted value longer than the field limit) as a `CsvFormatError`."""
    try:
        yield
    except csv.Error as exc:
        raise CsvFormatError(f"row {row()}: {exc}") from None


def _data_rows(reader: Iterator[list[str]], number: int, column: int) -> Iterator[Row]:
    """Rows under a header: the value of the email column (``""`` if the row has none)."""
    with _csv_errors(lambda: number + 1):
        for record in reader:
            number += 1
            if len(record) > column:
                value = record[column].strip()
                if value:
                    yield (number, value)
                    continue
            if columns(record):
                yield (number, "")


def _single_column_rows(reader: Iterator[list[str]], number: int) -> Iterator[Row]:
    """Rows of a headerless single-column file; a row with more cells keeps them all, joined."""
    with _csv_errors(lambda: number + 1):
        for record in reader:
            number += 1
            if len(record) == 1:
                value = record[0].strip()
                if value:
                    yield (number, value)
                continue
            if count := columns(record):
                yield (number, ",".join(field.strip() for field in record[:count]))
