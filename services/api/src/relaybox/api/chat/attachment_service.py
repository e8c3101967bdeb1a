"""Attachments: an upload checked and stored (file and `chat_attachments` row), and the one SQL
query that decides who may download one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import exists, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client
from relaybox.api.chat.attachment_types import check_declared, sniff
from relaybox.api.errors import ApiError, NotFoundError
from relaybox.api.idempotency import Idempotency, StoredResponse
from relaybox.api.uploads import ReceivedFile, chunks, clean_file_name
from relaybox.common.chat.storage import CHUNK_BYTES, AttachmentStore, lock_file
from relaybox.common.chat.visibility import visible_message
from relaybox.common.db.models import ChatAttachment, ChatMessage, ChatMessageAttachment

IDEMPOTENCY_SCOPE = "chat.attachment"
UNNAMED = "attachment"  # the name of a file whose own name cleans to nothing


class AttachmentDetail(msgspec.Struct, rename="camel"):
    """An uploaded file; `contentType` is what its bytes are (sniffed), not what was declared."""

    id: uuid.UUID
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    created_at: datetime


@dataclass(frozen=True)
class CheckedAttachment:
    """A received file that passed every check, with the name and type it is stored with."""

    received: ReceivedFile
    filename: str
    content_type: str

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the request for Idempotency-Key (the file by its digest)."""
        return {"fileSha256": self.received.sha256, "filename": self.filename}


def check(received: ReceivedFile) -> CheckedAttachment:
    """400 for an empty file; the sniffed type (415 when the declared one contradicts it)."""
    if received.size == 0:
        raise ApiError("the file is empty", field="file")
    sniffed = sniff(received.head, complete=received.size <= len(received.head))
    check_declared(received.declared_type, sniffed)
    filename = clean_file_name(received.filename) or UNNAMED
    return CheckedAttachment(received, filename, sniffed)


async def store_upload(
    session: AsyncSession,
    store: AttachmentStore,
    client: Client,
    upload: CheckedAttachment,
    idempotency: Idempotency | None,
) -> StoredResponse:
    """Store the file, then its row: 201.

    The file is written before the transaction, so no database connection waits on the store,
    and always written, even when the same bytes are stored already (the answer takes as long
    whether or not someone, of any tenant, holds the same file). The transaction then takes the
    file's advisory lock, which the sweeper holds to delete a file no row names: if it deleted
    this one in between (another tenant's old upload of the same bytes was swept), it is
    written again under the lock, and the row commits before the sweeper can look again.
    """
    sha256 = upload.received.sha256
    await store.put(sha256, chunks(upload.received.file, CHUNK_BYTES))
    async with session.begin():
        if idempotency is not None and (stored := await idempotency.replay(session)):
            return stored
        await lock_file(session, sha256)
        if not await store.exists(sha256):  # swept between the write and the lock
            await store.put(sha256, chunks(upload.received.file, CHUNK_BYTES))
        row = await session.scalar(
            insert(ChatAttachment)
            .values(
                id=uuid.uuid4(),
                tenant_id=client.tenant,
                uploader_id=client.id,
                filename=upload.filename,
                content_type=upload.content_type,
                size_bytes=upload.received.size,
                sha256=sha256,
            )
            .returning(ChatAttachment)
        )
        assert row is not None
        response = StoredResponse.of(201, detail(row))
        if idempotency is not None:
            await idempotency.store(session, response)
    return response


async def downloadable(
    session: AsyncSession, client: Client, attachment_id: uuid.UUID
) -> ChatAttachment:
    """The attachment if the caller uploaded it or may see a message that references it (the
    history rule, `visible_message`); else 404, whether it exists or not."""
    referenced_where_seen = exists().where(
        ChatMessageAttachment.attachment_id == ChatAttachment.id,
        ChatMessage.id == ChatMessageAttachment.message_id,
        visible_message(client.tenant, client.id),
    )
    async with session.begin():
        row = await session.scalar(
            select(ChatAttachment).where(
                ChatAttachment.id == attachment_id,
                ChatAttachment.tenant_id == client.tenant,
                or_(ChatAttachment.uploader_id == client.id, referenced_where_seen),
            )
        )
    if row is None:
        raise NotFoundError.of("attachment", attachment_id)
    return row


def detail(row: ChatAttachment) -> AttachmentDetail:
    return AttachmentDetail(
        id=row.id,
        filename=row.filename,
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        created_at=row.created_at,
    )
