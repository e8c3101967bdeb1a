"""The dead-letter office's intake: every message that dies ends as a row of `dead_letters`.

A message dies three ways, and all three end here:
- a handler gives up (attempts ran out): it writes the copy to the `dead` outbox destination,
  which the publisher routes to the route's `*.dlq` queue, with the error in `x-last-error`;
- a handler finds the message unprocessable (`PoisonMessageError`): the worker files it here
  itself, with the reason, and acks it (if filing fails it is rejected to the DLQ instead);
- RabbitMQ dead-letters it (a quorum queue's delivery limit: the consumer crashed on it again
  and again): it lands in the DLQ with RabbitMQ's `x-death` header.

The worker drains every `*.dlq` queue into the table, so RabbitMQ stays a transport and the DLQ
a place that empties. A row is keyed by its route and a fingerprint of its payload: the same
message dying again (after a replay) counts up and is open again; the same death delivered
twice (the drain crashed before its ack) is counted once, by its AMQP message id.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.db.session import run_on_driver
from relaybox.common.messaging.topology import CHAT_DELIVER
from relaybox.consumer import metrics

SECRET_PAYLOAD_KEYS = frozenset({"token"})
"""Payload keys that never enter a dead letter (a mailing recipient's token travels only in the
message; its hash is all the database keeps)."""
ATTEMPTS_HEADER = "x-attempts"
"""Set by a handler on the copy it dead-letters: the attempts the row took."""
LAST_ERROR_HEADER = "x-last-error"
MAX_ERROR = 1000

# RabbitMQ's x-death reasons, said in words an operator can act on.
_DEATH_REASONS = {
    "rejected": "rejected by the consumer as unprocessable",
    "delivery_limit": "redelivered past the queue's delivery limit (a consumer crashed on it "
    "every time)",
    "expired": "expired in its queue",
    "maxlen": "dropped by its queue's length limit",
}


def scrubbed(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload without its secrets."""
    return {k: v for k, v in payload.items() if k not in SECRET_PAYLOAD_KEYS}


def _json_safe(value: Any) -> Any:
    """AMQP header values (bytes, datetimes, nested tables) as JSON values."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _jsonb(value: Any) -> str:
    """JSON text PostgreSQL's jsonb accepts (it refuses the NUL character)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False).replace("\\u0000", "\\ufffd")


@dataclass(frozen=True)
class Death:
    """One message's death, as filed."""

    route: str
    payload: dict[str, Any]
    headers: dict[str, Any]
    error: str | None
    attempts: int
    message_id: str | None

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.route}\n{_jsonb(self.payload)}".encode()).hexdigest()

    @property
    def row_id(self) -> str | None:
        """The domain row the message points at (an email, a Meta message, a mailing, a chat
        message), if it names one."""
        key = "messageId" if self.route == CHAT_DELIVER else "id"
        value = self.payload.get(key)
        return str(value)[:255] if isinstance(value, str | int) else None


def _payload(body: bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(body)
    except ValueError:
        return {"body": body.decode("utf-8", errors="replace")}
    return scrubbed(decoded) if isinstance(decoded, dict) else {"body": decoded}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _death_error(headers: dict[str, Any]) -> str | None:
    deaths = headers.get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
        return None
    death = deaths[0]  # the most recent
    reason = str(death.get("reason", "unknown"))
    return f"{_DEATH_REASONS.get(reason, reason)} (queue {death.get('queue', '?')})"


def death_of(message: AbstractIncomingMessage, error: str | None = None) -> Death:
    """The death a DLQ message (or a poison message, with the worker's `error`) records."""
    headers = _json_safe(dict(message.headers or {}))
    given = headers.get(LAST_ERROR_HEADER)
    error = error or (str(given) if given is not None else None) or _death_error(headers)
    attempts = _int(headers.get(ATTEMPTS_HEADER))
    if attempts is None:  # RabbitMQ counts a quorum queue's redeliveries
        delivered = _int(headers.get("x-delivery-count"))
        attempts = delivered + 1 if delivered is not None else 1
    return Death(
        route=message.routing_key or "",
        payload=_payload(message.body),
        headers=headers,
        error=error[:MAX_ERROR] if error else None,
        attempts=attempts,
        message_id=message.message_id,
    )


_FILE = """
INSERT INTO dead_letters AS d
    (id, route, fingerprint, row_id, payload, headers, last_error, attempts, last_message_id)
VALUES ($1::uuid, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9)
ON CONFLICT (route, fingerprint) DO UPDATE
SET count = d.count + 1, status = 'open', last_seen_at = now(),
    headers = excluded.headers, last_error = excluded.last_error,
    attempts = excluded.attempts, last_message_id = excluded.last_message_id
WHERE d.last_message_id IS DISTINCT FROM excluded.last_message_id
RETURNING d.count
"""

_OPEN_BY_ROUTE = """
SELECT route, count(*) AS open,
       coalesce(extract(epoch FROM now() - min(last_seen_at)), 0)::float8 AS oldest_s
FROM dead_letters WHERE status = 'open' GROUP BY route
"""


class DeadLetterOffice:
    """Files deaths into `dead_letters` and reports the open ones as metrics."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def file(self, death: Death) -> None:
        """Record a death (safe to repeat: the same message id counts once)."""

        async def upsert(conn: asyncpg.Connection, _: bool) -> int | None:
            count: int | None = await conn.fetchval(
                _FILE,
                uuid.uuid4(),
                death.route[:255],
                death.fingerprint,
                death.row_id,
                _jsonb(death.payload),
                _jsonb(death.headers),
                death.error,
                death.attempts,
                death.message_id,
            )
            return count

        if await run_on_driver(self.engine, upsert) is not None:  # None: this death was filed
            metrics.DEAD_LETTERS_DRAINED.labels(death.route).inc()

    async def refresh_metrics(self, routes: list[str]) -> None:
        """The open dead letters and the oldest one's age, per route (0 for a route with none)."""

        async def read(conn: asyncpg.Connection, _: bool) -> list[asyncpg.Record]:
            return list(await conn.fetch(_OPEN_BY_ROUTE))

        rows = {r["route"]: r for r in await run_on_driver(self.engine, read)}
        for route in sorted(set(routes) | set(rows)):
            row = rows.get(route)
            metrics.DEAD_LETTERS_OPEN.labels(route).set(row["open"] if row else 0)
            metrics.DEAD_LETTERS_OLDEST_AGE.labels(route).set(row["oldest_s"] if row else 0)
