"""Creating a mailing: the checked upload stored with its `mailing.parse` outbox row in one
transaction, or the same file's recent mailing answered again."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import (
    func,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client
from relaybox.api.idempotency import Idempotency, StoredResponse, lock_key
from relaybox.api.mailings.reads import RecipientCounts, View, detail_of, mailing_detail
from relaybox.api.mailings.upload import CheckedUpload
from relaybox.api.settings import MailingSettings
from relaybox.api.uploads import chunks
from relaybox.common.db.models import Mailing, MailingChunk
from relaybox.common.mailings.rules import MailingStatus
from relaybox.common.messaging.topology import MAILING_PARSE
from relaybox.common.outbox import enqueue, trace_headers

IDEMPOTENCY_SCOPE = "mailing.create"
REUPLOAD_LOCK_SCOPE = "mailing.file"  # serialises uploads of one file by one tenant


async def create_mailing(
    session: AsyncSession,
    *,
    client: Client,
    upload: CheckedUpload,
    settings: MailingSettings,
    idempotency: Idempotency | None,
    correlation_id: str | None,
    view: View,
) -> StoredResponse:
    """Store the mailing (PARSING), its file in chunks and its `mailing.parse` outbox row in one
    transaction: 202. The same file with the same subject and body from the same tenant within
    `reupload_window_s` answers that mailing as it is now (200) and writes nothing.

    The re-upload check runs under a transaction-level advisory lock on (tenant, sha256), so two
    concurrent uploads of one file make one mailing: the second waits and then finds the first.
    """
    async with session.begin():
        if idempotency is not None and (stored := await idempotency.replay(session)):
            return stored
        await session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": lock_key(client.tenant, REUPLOAD_LOCK_SCOPE, upload.sha256)},
        )
        existing = await _recent_upload(session, client, upload, settings.reupload_window_s)
        if existing is not None:
            response = StoredResponse.of(200, await detail_of(session, existing, view))
        else:
            mailing = await _store(session, client, upload, settings.chunk_bytes)
            await enqueue(
                session,
                routing_key=MAILING_PARSE,
                payload={"id": str(mailing.id)},
                headers=trace_headers(correlation_id),
            )
            response = StoredResponse.of(202, mailing_detail(mailing, RecipientCounts(), view))
        if idempotency is not None:
            await idempotency.store(session, response)
    return response


async def _recent_upload(
    session: AsyncSession, client: Client, upload: CheckedUpload, window_s: int
) -> Mailing | None:
    """The tenant's newest mailing of this file, subject and body within the window (one that
    was cancelled or failed does not count: uploading again is how to start over)."""
    if window_s <= 0:
        return None
    return await session.scalar(
        select(Mailing)
        .where(
            Mailing.tenant_id == client.tenant,
            Mailing.file_sha256 == upload.sha256,
            Mailing.created_at > func.now() - timedelta(seconds=window_s),
            Mailing.subject == upload.subject,
            Mailing.body_template == upload.body,
            Mailing.status.not_in((MailingStatus.CANCELLED, MailingStatus.FAILED)),
        )
        .order_by(Mailing.created_at.desc())
        .limit(1)
    )


async def _store(
    session: AsyncSession, client: Client, upload: CheckedUpload, chunk_bytes: int
) -> Mailing:
    """The mailing row, then the file as `mailing_chunks` rows 0..n, one chunk in memory."""
    mailing: Mailing | None = await session.scalar(
        insert(Mailing)
        .values(
            id=uuid.uuid4(),
            tenant_id=client.tenant,
            status=MailingStatus.PARSING,
            subject=upload.subject,
            body_template=upload.body,
            file_name=upload.file_name,
            file_sha256=upload.sha256,
            file_bytes=upload.size,
        )
        .returning(Mailing)
    )
    assert mailing is not None
    seq = 0
    async for chunk in chunks(upload.file, chunk_bytes):
        await session.execute(
            insert(MailingChunk).values(mailing_id=mailing.id, seq=seq, data=chunk)
        )
        seq += 1
    return mailing
