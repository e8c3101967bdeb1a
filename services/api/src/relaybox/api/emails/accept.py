"""POST /send: the one-statement accept path (the email, its outbox row, the NOTIFY and the
Idempotency-Key answer in one round trip)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC

import asyncpg
import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.auth import Client
from relaybox.api.emails.schemas import (
    Accepted,
    SendEmailRequest,
)
from relaybox.api.idempotency import Idempotency, StoredResponse, lock_key, request_hash
from relaybox.common.db.session import run_on_driver
from relaybox.common.messaging.topology import EMAIL_SEND
from relaybox.common.outbox import NOTIFY_CHANNEL, WORK, trace_headers

IDEMPOTENCY_SCOPE = "email.send"

# POST /send is the hot path: ONE statement, hence one round trip and one (implicit)
# transaction, writes the email, its outbox row, the NOTIFY that wakes the publisher and, with an
# Idempotency-Key, the stored answer. Data-modifying CTEs always run to completion; pg_notify runs
# only when the email was written and, like NOTIFY, is delivered on commit, never on rollback.
#
# With a key ($13, the name of its advisory lock; NULL without one) the statement first takes the
# key's lock (held by a request with the key that is still running: 409) and claims the key: the
# INSERT ... ON CONFLICT sees the latest committed row whatever the statement's snapshot, and
# takes it over only once it has expired. The email is written only if the claim succeeded; the
# stored answer is built from the same values (now() is the transaction's timestamp, hence the
# email's created_at). A key that holds a live answer is replayed by a second statement.
ACCEPT_SQL = """
WITH lock AS (
    SELECT $13::text IS NULL OR pg_try_advisory_xact_lock(hashtextextended($13::text, 0)) AS locked
), claim AS (
    INSERT INTO idempotency_keys AS k (client_id, scope, key, request_hash, status_code, response)
    SELECT $2::text, $14::text, $15::text, $16::text, 202,
           jsonb_build_object('id', $1::uuid, 'status', 'PENDING', 'createdAt', now())
    FROM lock WHERE lock.locked AND $13::text IS NOT NULL
    ON CONFLICT (client_id, scope, key) DO UPDATE SET
        request_hash = EXCLUDED.request_hash, status_code = EXCLUDED.status_code,
        response = EXCLUDED.response, created_at = now()
    WHERE k.created_at <= now() - make_interval(hours => $17::int)
    RETURNING 1
), email AS (
    INSERT INTO emails (id, tenant_id, to_address, from_address, subject, text_body, html_body)
    SELECT $1::uuid, $18::text, $3::text, $4::text, $5::text, $6::text, $7::text
    FROM lock WHERE lock.locked AND ($13::text IS NULL OR EXISTS (SELECT FROM claim))
    ON CONFLICT (id) DO NOTHING  -- a repeat after a lost connection whose first run committed
    RETURNING id, created_at
), queued AS (
    INSERT INTO outbox (message_id, destination, routing_key, payload, headers)
    SELECT $8::uuid, $9::text, $10::text, jsonb_build_object('id', email.id), $11::jsonb
    FROM email
), notified AS (
    SELECT pg_notify($12::text, '') FROM email
)
SELECT lock.locked, email.created_at FROM lock LEFT JOIN email ON true LEFT JOIN notified ON true
"""


@dataclass(frozen=True)
class EmailIntake:
    """POST /send as one dependency: the engine it writes through and the settings it applies.

    (One dependency, not three: Litestar resolves two or more in a task group per request.)
    """

    engine: AsyncEngine
    default_from: str
    idempotency_ttl_h: int

    async def accept(
        self,
        *,
        client: Client,
        request: SendEmailRequest,
        key: str | None,
        correlation_id: str | None,
    ) -> StoredResponse:
        """Accept one validated request of `client`, for its tenant (see `accept_email`)."""
        client_id = client.key_owner
        idempotency = None
        if key is not None:
            fingerprint = request_hash(request.model_dump(by_alias=True))
            idempotency = Idempotency(
                client_id, IDEMPOTENCY_SCOPE, key, fingerprint, self.idempotency_ttl_h
            )
        return await accept_email(
            self.engine,
            client_id=client_id,
            tenant=client.tenant,
            request=request,
            default_from=self.default_from,
            idempotency=idempotency,
            correlation_id=correlation_id,
        )


_CREATED_AT_SQL = "SELECT created_at FROM emails WHERE id = $1"


async def accept_email(
    engine: AsyncEngine,
    *,
    client_id: str,
    tenant: str,
    request: SendEmailRequest,
    default_from: str,
    idempotency: Idempotency | None,
    correlation_id: str | None,
) -> StoredResponse:
    """Write the PENDING email of `tenant`, its outbox row and (with a key, stored under the
    client's id) the stored answer in one transaction, or replay the answer stored under the
    key (422 for another body, 409 while the first request with the key still runs).

    Safe to repeat after a lost connection (`run_on_driver`): a repeat writes under the same
    email id, so if the first run committed, the repeat writes nothing and answers with it.
    """
    email_id, message_id = _new_ids()
    key = idempotency
    args = (
        email_id,
        client_id,
        request.to,
        request.from_ or default_from,
        request.subject,
        request.text,
        request.html,
        message_id,  # the outbox message id
        WORK,
        EMAIL_SEND,
        msgspec.json.encode(trace_headers(correlation_id)).decode(),
        NOTIFY_CHANNEL,
        lock_key(key.client_id, key.scope, key.key) if key else None,
        key and key.scope,
        key and key.key,
        key and key.fingerprint,
        key and key.ttl_h,
        tenant,
    )

    async def accept(conn: asyncpg.Connection, repeated: bool) -> StoredResponse:
        locked, created_at = await conn.fetchrow(ACCEPT_SQL, *args)
        if key is not None:
            if not locked:
                raise key.in_flight()
            if created_at is None:  # the key holds a live answer: replay it (or 422)
                return _replayed(await key.find(conn))
        elif created_at is None:  # only a repeat can find its email already written
            assert repeated, f"email id {email_id} taken"
            created_at = await conn.fetchval(_CREATED_AT_SQL, email_id)
        accepted = Accepted(id=email_id, status="PENDING", created_at=created_at)
        return StoredResponse.of(202, accepted)

    return await run_on_driver(engine, accept)


def _new_ids() -> tuple[uuid.UUID, uuid.UUID]:
    """Two random (version 4) UUIDs, as `uuid.uuid4()` makes them, from one read of the OS's
    random source."""
    raw = os.urandom(32)
    return uuid.UUID(bytes=raw[:16], version=4), uuid.UUID(bytes=raw[16:], version=4)


def _replayed(stored: StoredResponse) -> StoredResponse:
    """The stored answer as the first one read: its timestamp re-encoded from the instant."""
    accepted = msgspec.convert(stored.body, Accepted)
    utc = msgspec.structs.replace(accepted, created_at=accepted.created_at.astimezone(UTC))
    return StoredResponse.of(stored.status_code, utc)
