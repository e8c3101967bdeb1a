"""Uploaded files, whatever the domain: a file part streamed from the request into a temporary
file while it is measured and hashed, the size limits (413) and the client's file name cleaned.

Mailings let Litestar parse their form (its limit on the whole body stops a large one) and then
`measure` the file; chat attachments stream their one file part here with `receive_file`, which
cuts a body off as soon as the file passes its limit.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import anyio
from anyio import AsyncFile
from litestar import Request
from litestar.datastructures import UploadFile
from litestar.exceptions import ClientException
from multipart import (  # type: ignore[import-untyped]
    MultipartSegment,
    ParserError,
    ParserLimitReached,
    PushMultipartParser,
)

from relaybox.api.errors import ApiError

MAX_FILE_NAME = 255
SPOOL_BYTES = 1024 * 1024  # a received file stays in memory up to this size, then on disk
MAX_FORM_PARTS = 16
CONTROL_CHARACTERS = {chr(c) for c in (*range(0x20), 0x7F)}


class PayloadTooLargeError(ApiError):
    status_code = 413
    title = HTTPStatus.REQUEST_ENTITY_TOO_LARGE.phrase


class UnsupportedMediaTypeError(ApiError):
    status_code = 415
    title = HTTPStatus.UNSUPPORTED_MEDIA_TYPE.phrase


def clean_file_name(name: str | None) -> str | None:
    """The file's own name: no client-side directories, no control characters, 255 at most."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if c not in CONTROL_CHARACTERS).strip()
    return base[:MAX_FILE_NAME] or None


def too_large(max_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the file is larger than the limit of {max_bytes} bytes", field="file", maxBytes=max_bytes
    )


def body_too_large(max_file_bytes: int, max_body_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the body is larger than {max_body_bytes} bytes: a file of at most {max_file_bytes} "
        "bytes and the form around it",
        field="file",
        maxBytes=max_file_bytes,
    )


async def measure(
    pieces: AsyncIterable[bytes],
    *,
    max_bytes: int,
    sink: Callable[[bytes], Awaitable[object]] | None = None,
) -> tuple[str, int]:
    """(sha256 hex, size) of `pieces`, each handed to `sink` too; a 413 as soon as they pass
    `max_bytes` (the piece that passes it goes nowhere)."""
    digest = hashlib.sha256()
    size = 0
    async for piece in pieces:
        size += len(piece)
        if size > max_bytes:
            raise too_large(max_bytes)
        digest.update(piece)
        if sink is not None:
            await sink(piece)
    return digest.hexdigest(), size


async def chunks(upload: UploadFile | AsyncFile[bytes], chunk_bytes: int) -> AsyncIterator[bytes]:
    """The file from its start, `chunk_bytes` at a time (the last piece may be shorter)."""
    await upload.seek(0)
    while chunk := await upload.read(chunk_bytes):
        yield chunk


@dataclass
class ReceivedFile:
    """The file part of a form, held in a temporary file (read it with `chunks`)."""

    file: AsyncFile[bytes]
    filename: str | None  # as the client sent it
    declared_type: str | None  # the part's Content-Type, when it has one
    head: bytes  # the first bytes, for sniffing
    sha256: str
    size: int

    async def close(self) -> None:
        await self.file.aclose()


@dataclass
class _Part:
    """What the form says of its file part, once its headers are parsed."""

    segment: MultipartSegment | None = None


async def receive_file(
    request: Request[Any, Any, Any],
    *,
    field: str,
    max_file_bytes: int,
    form_overhead_bytes: int,
    head_bytes: int,
) -> ReceivedFile:
    """Stream the multipart body's one file part `field` into a temporary file, hashing it.

    413 before a byte is read when the Content-Length passes `max_file_bytes +
    form_overhead_bytes` (the form around the file), and while reading as soon as the file
    passes `max_file_bytes` or the body the sum. 400 for a body that is not a multipart form,
    has no file part `field` (or two), or sends it without a filename. Other parts are skipped.
    The handler must lift Litestar's own body limit (`request_max_body_size=None`).
    """
    max_form_bytes = max_file_bytes + form_overhead_bytes
    announced = _content_length(request)
    if announced is not None and announced > max_form_bytes:
        raise body_too_large(max_file_bytes, max_form_bytes)
    boundary = _boundary(request)
    spool = anyio.wrap_file(tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES))  # noqa: SIM115
    head = bytearray()

    async def keep(piece: bytes) -> None:
        if len(head) < head_bytes:
            head.extend(piece[: head_bytes - len(head)])
        await spool.write(piece)

    part = _Part()
    try:
        body = _file_part(request, boundary, field, part, (max_file_bytes, max_form_bytes))
        async with aclosing(body) as data:
            sha256, size = await measure(data, max_bytes=max_file_bytes, sink=keep)
        if part.segment is None:
            raise ApiError(f"a file is required in the multipart part '{field}'", field=field)
    except BaseException:
        await spool.aclose()
        raise
    segment = part.segment
    return ReceivedFile(spool, segment.filename, segment.content_type, bytes(head), sha256, size)


async def _file_part(
    request: Request[Any, Any, Any],
    boundary: str,
    field: str,
    part: _Part,
    limits: tuple[int, int],
) -> AsyncGenerator[bytes, None]:
    """The bytes of the file part `field`; `part.segment` is set when its headers arrive. Reads
    the body to its end (the form must be complete), at most `limits` (file, body) bytes."""
    max_file_bytes, max_form_bytes = limits
    total = 0
    current: MultipartSegment | None = None
    try:
        with PushMultipartParser(boundary, max_segment_count=MAX_FORM_PARTS) as parser:
            async for chunk in request.stream():
                total += len(chunk)
                if total > max_form_bytes:
                    raise body_too_large(max_file_bytes, max_form_bytes)
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        current = event
                        if event.name == field:
                            _accept(part, event, field)
                    elif event is None:
                        current = None
                    elif current is not None and current is part.segment:
                        yield event
    except ParserLimitReached:
        raise ApiError(
            f"the form has too many parts or too long part headers (at most {MAX_FORM_PARTS} parts)"
        ) from None
    except ParserError as exc:
        raise ApiError(f"the body is not valid multipart/form-data: {exc}") from None


def _accept(part: _Part, segment: MultipartSegment, field: str) -> None:
    if part.segment is not None:
        raise ApiError(f"send one file in the part '{field}'", field=field)
    if not segment.filename:
        raise ApiError(
            f"send '{field}' as a file part (with a filename in its Content-Disposition)",
            field=field,
        )
    part.segment = segment


def _content_length(request: Request[Any, Any, Any]) -> int | None:
    try:
        return request.content_length
    except ClientException:
        raise ApiError("the Content-Length header is not a number") from None


def _boundary(request: Request[Any, Any, Any]) -> str:
    media_type, options = request.content_type
    boundary = options.get("boundary")
    if media_type != "multipart/form-data" or not boundary:
        raise ApiError(
            "the body must be multipart/form-data (with a boundary) holding the file",
            field="body",
        )
    return boundary
