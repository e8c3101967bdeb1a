"""The lease-based status machine of an outbound message row (PENDING → SENDING → SENT | FAILED).

Every transition is one atomic UPDATE guarded by the current status, so concurrent consumers,
redeliveries and late events can never move a row backwards or claim it twice.

Each statement is written once, in asyncpg's `$n` form, and runs either on a bare asyncpg
connection (the hot path: a single statement in autocommit, without SQLAlchemy's per-statement
work) or inside a SQLAlchemy transaction (`exec_driver_sql`, when other writes share it).
"""

from __future__ import annotations

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
                provider_message_id = $2::text, last_error = NULL
            WHERE id = $1::uuid AND status IN ('PENDING', 'SENDING')
            RETURNING 1 AS moved""",  # noqa: S608
        "release": f"""
            UPDATE {t}
            SET status = 'PENDING', last_error = $3::text, lease_until = NULL,
                updated_at = now(), attempts = attempts - $4::int
            WHERE id = $1::uuid AND status = 'SENDING' AND attempts = $2::int
            RETURNING 1 AS moved""",  # noqa: S608
        "failed": f"""
            UPDATE {t}
            SET status = 'FAILED', failed_at = now(), updated_at = now(), lease_until = NULL,
                last_error = $2::text
            WHERE id = $1::uuid AND status IN ('PENDING', 'SENDING')
            RETURNING 1 AS moved""",  # noqa: S608
    }


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

    async def peek(self, db: Db, row_id: Any) -> Peek | None:
        """The status of a row we could not claim, or None if it does not exist."""
        row = await _fetchrow(db, self._statement("peek"), row_id)
        return Peek(row["status"], row["lease_left_s"]) if row else None

    async def mark_sent(self, db: Db, row_id: Any, provider_id: str) -> bool:
        """→ SENT (from PENDING or SENDING only: never downgrades a later status)."""
        return await _fetchrow(db, self._statement("sent"), row_id, provider_id) is not None

    async def release_for_retry(
        self, db: Db, row_id: Any, attempts: int, error: str, *, refund: bool = False
    ) -> bool:
        """SENDING → PENDING with the error, only if our claim (attempt number) still holds.

        `refund` gives the attempt back (a provider's 429 is flow control, not a failure).
        """
        args = (row_id, attempts, error, int(refund))
        return await _fetchrow(db, self._statement("release"), *args) is not None

    async def mark_failed(self, db: Db, row_id: Any, error: str) -> bool:
        """→ FAILED with failed_at and the error (from PENDING or SENDING only)."""
        return await _fetchrow(db, self._statement("failed"), row_id, error) is not None
