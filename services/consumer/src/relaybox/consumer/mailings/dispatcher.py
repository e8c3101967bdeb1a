"""The mailing dispatcher: feeds recipients to `email.send` at the provider's pace, fairly.

Each round, in ONE transaction: count the recipients in flight (queued, email not final) across
every mailing, and fill the budget `max_in_flight - in_flight` by taking one recipient at a time
from the running mailings, least recently served first. For each: a fresh token (only its hash
is stored), an `emails` row (so the send is in the delivery log; its body keeps the `{token}`
placeholder), the recipient marked QUEUED, and an outbox row whose payload carries the token.
A crash anywhere rolls the round back: no recipient is skipped, none is queued twice. A
transaction-level advisory lock lets one replica dispatch at a time; the others skip the round.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relaybox.common.db.session import run_on_driver
from relaybox.common.delivery import IN_FLIGHT_SQL
from relaybox.common.messaging.topology import EMAIL_SEND
from relaybox.common.outbox import enqueue

log = logging.getLogger(__name__)
DISPATCHED = Counter("relaybox_mailing_dispatched_total", "Mailing recipients queued for sending")
DISPATCH_LOCK = 0x6D61696C  # "mail"
TOKEN_BYTES = 32  # 256 bits

IN_FLIGHT = text(
    f"""
    SELECT count(*) FROM mailing_recipients r JOIN emails e ON e.id = r.email_id
    WHERE r.status = 'QUEUED' AND e.status IN {IN_FLIGHT_SQL}
    """  # noqa: S608 - constants of the code
)
CANDIDATES = text(
    """
    SELECT m.id AS mailing_id, m.tenant_id, m.subject, m.body_template, p.id, p.email
    FROM (SELECT * FROM mailings WHERE status = 'RUNNING' ORDER BY updated_at, id
          FOR SHARE SKIP LOCKED) AS m
    CROSS JOIN LATERAL (
        SELECT r.id, r.email FROM mailing_recipients r
        WHERE r.mailing_id = m.id AND r.status = 'PENDING'
        ORDER BY r.id LIMIT :budget
        FOR UPDATE OF r SKIP LOCKED
    ) AS p
    """
)
QUEUE_RECIPIENT = text(
    """
    UPDATE mailing_recipients
    SET status = 'QUEUED', email_id = :email_id, token_hash = :token_hash, dispatched_at = now()
    WHERE id = :id AND status = 'PENDING'
    """
)
INSERT_EMAIL = text(
    """
    INSERT INTO emails (id, tenant_id, to_address, from_address, subject, text_body)
    VALUES (:id, :tenant_id, :to, :from_, :subject, :body)
    """
)
TOUCH_MAILINGS = text("UPDATE mailings SET updated_at = clock_timestamp() WHERE id = ANY(:ids)")
COMPLETE = text(
    f"""
    UPDATE mailings m SET status = 'COMPLETED', finished_at = now(), updated_at = now()
    WHERE m.status = 'RUNNING' AND NOT EXISTS (
        SELECT 1 FROM mailing_recipients r LEFT JOIN emails e ON e.id = r.email_id
        WHERE r.mailing_id = m.id
          AND (r.status = 'PENDING' OR (r.status = 'QUEUED' AND e.status IN {IN_FLIGHT_SQL}))
    )
    RETURNING m.id::text
    """  # noqa: S608 - constants of the code
)


ANY_RUNNING = "SELECT EXISTS (SELECT FROM mailings WHERE status = 'RUNNING')"


async def _any_running(conn: asyncpg.Connection, _repeated: bool) -> bool:
    return bool(await conn.fetchval(ANY_RUNNING))


def token_hash(token: str) -> str:
    """What is stored of a recipient's token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def interleave(rows: list[Any], budget: int) -> list[Any]:
    """Round-robin across mailings (rows arrive grouped, least recently served mailing first)."""
    queues: dict[Any, list[Any]] = {}
    for row in rows:
        queues.setdefault(row.mailing_id, []).append(row)
    picked: list[Any] = []
    while len(picked) < budget and any(queues.values()):
        for pending in queues.values():
            if pending and len(picked) < budget:
                picked.append(pending.pop(0))
    return picked


@dataclass
class Dispatcher:
    """One replica's dispatcher; `max_in_flight` bounds queued-but-unsent recipients globally."""

    engine: AsyncEngine
    max_in_flight: int
    default_from: str = "relaybox@localhost"

    async def round(self) -> int:
        """One dispatch round and the completion check, skipped at the cost of one statement
        when no mailing is RUNNING (the rounds run every `RELAYBOX_DISPATCH_INTERVAL_S`, and
        most of the time nothing is mailing)."""
        if not await run_on_driver(self.engine, _any_running):
            return 0
        queued = await self.dispatch()
        await self.complete()
        return queued

    async def dispatch(self) -> int:
        """One round; how many recipients were queued."""
        async with self.engine.begin() as conn:
            if not await conn.scalar(
                text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": DISPATCH_LOCK}
            ):
                return 0  # another replica is dispatching this round
            budget = self.max_in_flight - int(await conn.scalar(IN_FLIGHT) or 0)
            if budget <= 0:
                return 0
            rows = list(await conn.execute(CANDIDATES, {"budget": budget}))
            picked = interleave(rows, budget)
            for row in picked:
                await self._queue(conn, row)
            if picked:
                await conn.execute(TOUCH_MAILINGS, {"ids": list({r.mailing_id for r in picked})})
        if picked:
            DISPATCHED.inc(len(picked))
        return len(picked)

    async def complete(self) -> list[str]:
        """Mark RUNNING mailings with nothing left to send as COMPLETED."""
        async with self.engine.begin() as conn:
            done = [row[0] for row in await conn.execute(COMPLETE)]
        for mailing_id in done:
            log.info("mailing completed", extra={"mailing_id": mailing_id})
        return done

    async def _queue(self, conn: AsyncConnection, row: Any) -> None:
        token = new_token()
        email_id = uuid.uuid4()
        await conn.execute(
            INSERT_EMAIL,
            {
                "id": email_id,
                "tenant_id": row.tenant_id,
                "to": row.email,
                "from_": self.default_from,
                "subject": row.subject,
                "body": row.body_template,
            },
        )
        await conn.execute(
            QUEUE_RECIPIENT, {"id": row.id, "email_id": email_id, "token_hash": token_hash(token)}
        )
        await enqueue(conn, routing_key=EMAIL_SEND, payload={"id": str(email_id), "token": token})
