"""/chat/attachments: upload a file (streamed), download one the caller may see."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.params import FromPath
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client, requires
from relaybox.api.chat import attachment_service
from relaybox.api.chat.attachment_service import AttachmentDetail
from relaybox.api.chat.attachment_types import (
    HEAD_BYTES,
    INLINE_TYPES,
    content_disposition,
    response_media_type,
)
from relaybox.api.errors import NotFoundError
from relaybox.api.idempotency import Idempotency, IdempotencyKey, validate_key
from relaybox.api.openapi import READS_BODY, problems
from relaybox.api.settings import ApiSettings
from relaybox.api.uploads import receive_file
from relaybox.common.chat.storage import AttachmentStore, MissingFileError, open_store

log = logging.getLogger(__name__)
FORM_OVERHEAD_BYTES = 64 * 1024  # the form around the file: boundaries, part headers, the name
SANDBOX = "default-src 'none'; sandbox"


@dataclass
class UploadOperation(Operation):
    """POST /chat/attachments as documented: the multipart form the handler streams itself."""

    def __post_init__(self) -> None:
        form = Schema(
            type=OpenAPIType.OBJECT,
            required=["file"],
            properties={
                "file": Schema(
                    type=OpenAPIType.STRING,
                    format=OpenAPIFormat.BINARY,
                    min_length=1,  # an empty file is refused
                    description="the file (a part with a filename); its Content-Type, when "
                    "given, must agree with its bytes",
                )
            },
        )
        self.request_body = RequestBody(
            content={"multipart/form-data": OpenAPIMediaType(schema=form)}, required=True
        )


@dataclass
class DownloadOperation(Operation):
    """GET /chat/attachments/{id} as documented: the file's bytes, of its stored type."""

    def __post_init__(self) -> None:
        ok = self.responses["200"] if self.responses else None
        if isinstance(ok, OpenAPIResponse):
            binary = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
            ok.content = {"*/*": OpenAPIMediaType(schema=binary)}


def provide_store(settings: NamedDependency[ApiSettings]) -> AttachmentStore:
    """The configured store (cheap: it opens a connection per operation)."""
    return open_store(settings.chat.storage)


class AttachmentController(Controller):
    """Upload a file to attach to messages later; download one you may see."""

    path = "/attachments"
    tags = ["chat"]
    dependencies = {"attachment_store": Provide(provide_store, sync_to_thread=False)}

    @post(
        "/",
        opt={**requires("chat:write"), READS_BODY: True},
        status_code=201,
        request_max_body_size=None,  # `receive_file` applies the attachment limit itself
        operation_class=UploadOperation,
        responses=problems(415),
        summary="Upload an attachment (multipart form, part `file`)",
        description="Streams the file while hashing it. Larger than "
        "RELAYBOX_CHAT__MAX_ATTACHMENT_BYTES: 413 (before reading when Content-Length says so). "
        "The stored `contentType` is sniffed from the bytes (a known signature, else UTF-8 "
        "text as text/plain, else application/octet-stream); a part Content-Type that "
        "contradicts it is a 415. An empty file is a 400. Only the uploader may download the "
        "file until a message references it (POST /chat/messages `attachmentIds`); an upload "
        "no message references is deleted after RELAYBOX_CHAT__ATTACHMENT_RETENTION_H. "
        "Honours Idempotency-Key.",
    )
    async def upload(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        attachment_store: NamedDependency[AttachmentStore],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[AttachmentDetail]:
        client: Client = request.user
        key = validate_key(idempotency_key)
        received = await receive_file(
            request,
            field="file",
            max_file_bytes=settings.chat.max_attachment_bytes,
            form_overhead_bytes=FORM_OVERHEAD_BYTES,
            head_bytes=HEAD_BYTES,
        )
        try:
            checked = attachment_service.check(received)
            idempotency = Idempotency.of(
                client.key_owner,
                attachment_service.IDEMPOTENCY_SCOPE,
                key,
                checked.fingerprint(),
                settings.idempotency_ttl_h,
            )
            stored = await attachment_service.store_upload(
                db_session, attachment_store, client, checked, idempotency
            )
        finally:
            await received.close()
        return Response(stored.body, status_code=stored.status_code)  # type: ignore[arg-type]

    @get(
        "/{attachment_id:uuid}",
        opt=requires("chat:read"),
        operation_class=DownloadOperation,
        responses={
            200: ResponseSpec(
                bytes,
                description="The file, of its stored (sniffed) type, as an attachment (inline: "
                + ", ".join(sorted(INLINE_TYPES))
                + "); `ETag` is its sha256",
            )
        },
        summary="Download an attachment",
        description="For its uploader, and for whoever may see a message that references it "
        "(the history rule: members while they were members, anyone of the tenant for a "
        "channel); 404 for everyone else. Served with Content-Disposition, "
        f"X-Content-Type-Options: nosniff and Content-Security-Policy: {SANDBOX}.",
    )
    async def download(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        attachment_store: NamedDependency[AttachmentStore],
        attachment_id: FromPath[uuid.UUID],
    ) -> Stream:
        row = await attachment_service.downloadable(db_session, request.user, attachment_id)
        try:
            content = await attachment_store.open(row.sha256)
        except MissingFileError:
            log.error("attachment file missing", extra={"attachment_id": str(row.id)})
            raise NotFoundError(f"the file of attachment {row.id} is gone") from None
        return Stream(
            content,
            media_type=response_media_type(row.content_type),
            headers={
                "Content-Disposition": content_disposition(row.filename, row.content_type),
                "Content-Length": str(row.size_bytes),
                "ETag": f'"{row.sha256}"',
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": SANDBOX,
                "Cache-Control": "private, no-cache",
            },
        )
