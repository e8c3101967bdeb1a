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
