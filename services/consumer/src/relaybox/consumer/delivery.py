"""The lease-based status machine of an outbound message row (PENDING → SENDING → SENT | FAILED).

Every transition is one atomic UPDATE guarded by the current status, so concurrent consumers,
redeliveries and late events can never move a row backwards or claim it twice.

Each statement is written once, in asyncpg's `$n` form, and runs either on a bare asyncpg
connection (the hot path: a single statement in autocommit, without SQLAlchemy's per-statement
work) or inside a SQLAlchemy transaction (`exec_driver_sql`, when other writes share it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeAlias

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

Db: TypeAlias = "asyncpg.Connection | AsyncConnection"
"""Where a transition runs: a bare driver connection, or a SQLAlchemy one (in its transaction)."""


async def _fetchrow(db: Db, sql: str, *args: Any) -> dict[str, Any] | None:
    if isinstance(db, AsyncConnection):
        row = (await db.exec_driver_sql(sql, args)).mappings().first()
    else:
        row = await db.fetchrow(sql, *args)
    return dict(row) if row is not None else None


@cache
def _statements(t: str) -> dict[str, str]:
    """The transitions' SQL for table `t` (a constant of the code, never input)."""
    return {
        "claim": f"""
            UPDATE {t}
            SET status = 'SENDING', attempts = attempts + 1, updated_at = now(),
                lease_until = now() + make_interval(secs => $2::float8)
            WHERE id = $1::uuid
              AND (status = 'PENDING' OR (status = 'SENDING' AND lease_until < now()))
            RETURNING *""",  # noqa: S608
        "peek": f"""
            SELECT status,
                   greatest(0, coalesce(extract(epoch FROM lease_until - now()), 0))::float8
                   AS lease_left_s
            FROM {t} WHERE id = $1::uuid""",  # noqa: S608
        "sent": f"""
            UPDATE {t}
            SET status = 'SENT', sent_at = now(), updated_at = now(), lease_until = NULL,
                provider_message_id = left($2::text, 255), last_error = NULL
            WHERE id = $1::uuid AND status IN ('PENDING', 'SENDING')
            RETURNING 1 AS moved""",  # noqa: S608
        "release": f"""
            UPDATE {t}
            SET status = 'PENDING', last_error = coalesce($3::text, last_error),
                lease_until = NULL, updated_at = now(),
                attempts = attempts - $4::int, throttled = throttled + $5::int
            WHERE id = $1::uuid AND status = 'SENDING' AND attempts = $2::int
            RETURNING 1 AS moved""",  # noqa: S608
        "renew": f"""
            UPDATE {t}
            SET lease_until = now() + make_interval(secs => $3::float8), updated_at = now()
            WHERE id = $1::uuid AND status = 'SENDING' AND attempts = $2::int
            RETURNING 1 AS moved""",  # noqa: S608
        # The batched claim and SENT (`Coalescer`): one row per distinct id, locked in id order
        # (two replicas' batches never wait on each other in a cycle).
        "claim_many": f"""
            UPDATE {t} AS t
            SET status = 'SENDING', attempts = t.attempts + 1, updated_at = now(),
                lease_until = now() + make_interval(secs => b.lease_s)
            FROM (SELECT * FROM unnest($1::uuid[], $2::float8[]) AS u(id, lease_s)
                  ORDER BY id) AS b
            WHERE t.id = b.id
              AND (t.status = 'PENDING' OR (t.status = 'SENDING' AND t.lease_until < now()))
            RETURNING t.*""",  # noqa: S608
        "sent_many": f"""
            UPDATE {t} AS t
            SET status = 'SENT', sent_at = now(), updated_at = now(), lease_until = NULL,
                provider_message_id = left(b.provider_id, 255), last_error = NULL
            FROM (SELECT * FROM unnest($1::uuid[], $2::text[]) AS u(id, provider_id)
                  ORDER BY id) AS b
            WHERE t.id = b.id AND t.status IN ('PENDING', 'SENDING')
            RETURNING t.id""",  # noqa: S608
        "failed": f"""
            UPDATE {t}
            SET status = 'FAILED', failed_at = now(), updated_at = now(), lease_until = NULL,
                last_error = $2::text
            WHERE id = $1::uuid AND status IN ('PENDING', 'SENDING')
            RETURNING 1 AS moved""",  # noqa: S608
    }


def _keys(row_ids: Iterable[Any]) -> list[Any]:
    """Each id as the key its row comes back under (a UUID); an id that is not one stays as
    it is (the statement then fails, and each request runs alone)."""
    keys = []
    for row_id in row_ids:
        try:
            keys.append(row_id if isinstance(row_id, uuid.UUID) else uuid.UUID(str(row_id)))
        except ValueError:
            keys.append(row_id)
    return keys


@dataclass(frozen=True)
class Peek:
    """A row that could not be claimed: its status and how long its lease still runs."""

    status: str
    lease_left_s: float


@dataclass(frozen=True)
class DeliveryTable:
    """Transitions of one table that has id, status, attempts, lease_until and the timestamps."""

    table: str

    def _statement(self, name: str) -> str:
        return _statements(self.table)[name]

    async def claim(self, db: Db, row_id: Any, lease_s: float) -> dict[str, Any] | None:
        """PENDING (or SENDING with an expired lease) → SENDING; the row, or None if not ours."""
        return await _fetchrow(db, self._statement("claim"), row_id, lease_s)

    async def claim_many(
        self, conn: asyncpg.Connection, claims: Sequence[tuple[Any, float]]
    ) -> list[dict[str, Any] | None]:
        """`claim` for each (row id, lease) in one statement: per claim its row, or None. Of
        several claims of one row, the first gets it (as if they had run one after the other)."""
        wanted = _keys(row_id for row_id, _ in claims)
        leases: dict[Any, float] = {}
        for (_, lease_s), key in zip(claims, wanted, strict=True):
            leases[key] = max(lease_s, leases.get(key, lease_s))
        rows = await conn.fetch(
            self._statement("claim_many"), list(leases), [float(v) for v in leases.values()]
        )
        claimed: dict[Any, dict[str, Any]] = {row["id"]: dict(row) for row in rows}
        return [claimed.pop(key, None) for key in wanted]

    async def mark_sent_many(
        self, conn: asyncpg.Connection, sends: Sequence[tuple[Any, str | None]]
    ) -> list[bool]:
        """`mark_sent` for each (row id, provider id) in one statement: per send whether it
        moved the row. Of several sends of one row, the first one's counts."""
        wanted = _keys(row_id for row_id, _ in sends)
        provider_ids: dict[Any, str | None] = {}
        for (_, provider_id), key in zip(sends, wanted, strict=True):
            provider_ids.setdefault(key, provider_id)
        rows = await conn.fetch(
            self._statement("sent_many"), list(provider_ids), list(provider_ids.values())
        )
        moved = {row["id"] for row in rows}
        answers = []
        for key in wanted:
            answers.append(key in moved)
            moved.discard(key)
        return answers

    async def peek(self, db: Db, row_id: Any) -> Peek | None:
        """The status of a row we could not claim, or None if it does not exist."""
        row = await _fetchrow(db, self._statement("peek"), row_id)
        return Peek(row["status"], row["lease_left_s"]) if row else None

    async def mark_sent(self, db: Db, row_id: Any, provider_id: str | None) -> bool:
        """→ SENT (from PENDING or SENDING only: never downgrades a later status). The provider
        id is kept when the provider gave one (its first 255 characters)."""
        return await _fetchrow(db, self._statement("sent"), row_id, provider_id) is not None

    async def release_for_retry(
        self, db: Db, row_id: Any, attempts: int, error: str, *, throttled: bool = False
    ) -> bool:
        """SENDING → PENDING with the error, only if our claim (attempt number) still holds.

        `throttled` counts the attempt as a provider's 429: shown in the attempts, but not one
        of the RELAYBOX_MAX_ATTEMPTS (flow control, not a failure).
        """
        args = (row_id, attempts, error, 0, int(throttled))
        return await _fetchrow(db, self._statement("release"), *args) is not None

    async def unclaim(self, db: Db, row_id: Any, attempts: int) -> bool:
        """SENDING → PENDING before the provider was called (a stopping consumer): the attempt
        did not happen, so it is given back; only if our claim still holds."""
        args = (row_id, attempts, None, 1, 0)
        return await _fetchrow(db, self._statement("release"), *args) is not None

    async def renew(self, db: Db, row_id: Any, attempts: int, lease_s: float) -> bool:
        """Extend our claim's lease to `lease_s` from now; False when the claim was lost."""
        args = (row_id, attempts, lease_s)
        return await _fetchrow(db, self._statement("renew"), *args) is not None

    async def mark_failed(self, db: Db, row_id: Any, error: str) -> bool:
        """→ FAILED with failed_at and the error (from PENDING or SENDING only)."""
        return await _fetchrow(db, self._statement("failed"), row_id, error) is not None
