"""The lease-based status machine of an outbound message row (PENDING → SENDING → SENT | FAILED).

Every transition is one atomic UPDATE guarded by the current status, so concurrent consumers,
redeliveries and late events can never move a row backwards or claim it twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection


@cache
def _text(sql: str) -> TextClause:
    """Each statement is parsed once (a handler runs the same few on every message)."""
    return text(sql)


@dataclass(frozen=True)
class Peek:
    """A row that could not be claimed: its status and how long its lease still runs."""

    status: str
    lease_left_s: float


@dataclass(frozen=True)
class DeliveryTable:
    """Transitions of one table that has id, status, attempts, lease_until and the timestamps."""

    table: str

    async def claim(
        self, conn: AsyncConnection, row_id: Any, lease_s: float
    ) -> dict[str, Any] | None:
        """PENDING (or SENDING with an expired lease) → SENDING; the row, or None if not ours."""
        result = await conn.execute(
            _text(
                f"""
                UPDATE {self.table}
                SET status = 'SENDING', attempts = attempts + 1, updated_at = now(),
                    lease_until = now() + make_interval(secs => :lease)
                WHERE id = :id
                  AND (status = 'PENDING' OR (status = 'SENDING' AND lease_until < now()))
                RETURNING *
                """  # noqa: S608 - table name is a constant of the code, not input
            ),
            {"id": row_id, "lease": lease_s},
        )
        row = result.mappings().one_or_none()
        return dict(row) if row else None

    async def peek(self, conn: AsyncConnection, row_id: Any) -> Peek | None:
        """The status of a row we could not claim, or None if it does not exist."""
        result = await conn.execute(
            _text(
                f"""
                SELECT status,
                       greatest(0, coalesce(extract(epoch FROM lease_until - now()), 0))::float
                FROM {self.table} WHERE id = :id
                """  # noqa: S608
            ),
            {"id": row_id},
        )
        row = result.one_or_none()
        return Peek(row[0], row[1]) if row else None

    async def mark_sent(self, conn: AsyncConnection, row_id: Any, provider_id: str) -> bool:
        """→ SENT (from PENDING or SENDING only: never downgrades a later status)."""
        result = await conn.execute(
            _text(
                f"""
                UPDATE {self.table}
                SET status = 'SENT', sent_at = now(), updated_at = now(), lease_until = NULL,
                    provider_message_id = :pid, last_error = NULL
                WHERE id = :id AND status IN ('PENDING', 'SENDING')
                """  # noqa: S608
            ),
            {"id": row_id, "pid": provider_id},
        )
        return bool(result.rowcount)

    async def release_for_retry(
        self, conn: AsyncConnection, row_id: Any, attempts: int, error: str, *, refund: bool = False
    ) -> bool:
        """SENDING → PENDING with the error, only if our claim (attempt number) still holds.

        `refund` gives the attempt back (a provider's 429 is flow control, not a failure).
        """
        result = await conn.execute(
            _text(
                f"""
                UPDATE {self.table}
                SET status = 'PENDING', last_error = :error, lease_until = NULL, updated_at = now(),
                    attempts = attempts - :refund
                WHERE id = :id AND status = 'SENDING' AND attempts = :attempts
                """  # noqa: S608
            ),
            {"id": row_id, "attempts": attempts, "error": error, "refund": int(refund)},
        )
        return bool(result.rowcount)

    async def mark_failed(self, conn: AsyncConnection, row_id: Any, error: str) -> bool:
        """→ FAILED with failed_at and the error (from PENDING or SENDING only)."""
        result = await conn.execute(
            _text(
                f"""
                UPDATE {self.table}
                SET status = 'FAILED', failed_at = now(), updated_at = now(), lease_until = NULL,
                    last_error = :error
                WHERE id = :id AND status IN ('PENDING', 'SENDING')
                """  # noqa: S608
            ),
            {"id": row_id, "error": error},
        )
        return bool(result.rowcount)
