"""Idempotency-Key semantics (IETF draft): same key + same body → the stored response;
same key + another body → 422; the same key while the first request runs → 409.

Runs inside the caller's transaction, so the stored response commits with the rows it describes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar.params import HeaderParameter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.errors import ApiError, ConflictError, UnprocessableError

HEADER = "Idempotency-Key"
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"  # 1-255 visible ASCII characters
_VALID_KEY = re.compile(KEY_PATTERN)
# The header as a handler parameter; `validate_key` checks it (with a clearer answer than
# Litestar's), the document states the same pattern.
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name=HEADER,
        required=False,
        description="the same key with the same body answers the stored response (24 h)",
        schema_extra={"pattern": KEY_PATTERN},
    ),
]
_FIND_SQL = (
    "SELECT request_hash, status_code, response FROM idempotency_keys "
    "WHERE client_id = :c AND scope = :s AND key = :k "
    "AND created_at > now() - make_interval(hours => :ttl)"
)
_FIND_SQL_DRIVER = (  # the same with the driver's placeholders
    "SELECT request_hash, status_code, response FROM idempotency_keys "
    "WHERE client_id = $1 AND scope = $2 AND key = $3 "
    "AND created_at > now() - make_interval(hours => $4::int)"
)


@dataclass(frozen=True)
class StoredResponse:
    """An answer as it is stored (and replayed) under an Idempotency-Key: its status and body."""

    status_code: int
    body: dict[str, Any]

    @classmethod
    def of(cls, status_code: int, answer: msgspec.Struct) -> StoredResponse:
        """`answer` encoded as every other response is (camelCase, ISO timestamps)."""
        body: dict[str, Any] = msgspec.to_builtins(answer)
        return cls(status_code, body)


def request_hash(body: Any) -> str:
    """A fingerprint of the validated request body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not _VALID_KEY.fullmatch(key):
        raise ApiError(f"{HEADER} must be 1-255 visible ASCII characters", field=HEADER)
    return key


def lock_key(client_id: str, scope: str, key: str) -> str:
    """The text whose `hashtextextended` names the advisory lock of one key.

    PostgreSQL text cannot hold NUL, so the parts are joined with the unit separator (a key is
    visible ASCII and the scope is ours, so the parts stay unambiguous).
    """
    return f"{client_id}\x1f{scope}\x1f{key}"


@dataclass(frozen=True)
class Idempotency:
    """One key of one client on one endpoint."""

    client_id: str
    scope: str
    key: str
    fingerprint: str
    ttl_h: int = 24

    @classmethod
    def of(
        cls, client_id: str, scope: str, key: str | None, body: Any, ttl_h: int
    ) -> Idempotency | None:
        """The key's handle for a request whose validated body is `body`; None without a key."""
        return cls(client_id, scope, key, request_hash(body), ttl_h) if key else None

    async def replay(self, session: AsyncSession) -> StoredResponse | None:
        """Lock the key for this transaction; the stored response if the key was used before."""
        locked = await session.scalar(
            text("SELECT pg_try_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": lock_key(self.client_id, self.scope, self.key)},
        )
        if not locked:
            raise self.in_flight()
        row = (
            await session.execute(
                text(_FIND_SQL),
                {"c": self.client_id, "s": self.scope, "k": self.key, "ttl": self.ttl_h},
            )
        ).one_or_none()
        if row is None:
            return None
        return self._stored(row.request_hash, row.status_code, row.response)

    async def find(self, conn: asyncpg.Connection) -> StoredResponse:
        """The live answer stored under the key, read on a driver connection (a hot path that
        found the key taken: it exists, unless it expired in between, then retrying helps)."""
        row = await conn.fetchrow(
            _FIND_SQL_DRIVER, self.client_id, self.scope, self.key, self.ttl_h
        )
        if row is None:
            raise self.in_flight()
        return self._stored(row["request_hash"], row["status_code"], row["response"])

    def in_flight(self) -> ConflictError:
        """The answer while a request with the same key still runs (it holds the key's lock)."""
        return ConflictError(
            f"a request with this {HEADER} is still being processed; retry shortly"
        )

    def _stored(self, fingerprint: str, status_code: int, body: dict[str, Any]) -> StoredResponse:
        if fingerprint != self.fingerprint:
            raise UnprocessableError(
                f"this {HEADER} was already used with a different request body"
            )
        return StoredResponse(status_code, body)

    async def store(self, session: AsyncSession, response: StoredResponse) -> None:
        await session.execute(
            text(
                "INSERT INTO idempotency_keys "
                "(client_id, scope, key, request_hash, status_code, response) "
                "VALUES (:c, :s, :k, :h, :code, CAST(:body AS jsonb)) "
                "ON CONFLICT (client_id, scope, key) DO UPDATE SET "  # the old one had expired
                "request_hash = EXCLUDED.request_hash, status_code = EXCLUDED.status_code, "
                "response = EXCLUDED.response, created_at = now()"
            ),
            {
                "c": self.client_id,
                "s": self.scope,
                "k": self.key,
                "h": self.fingerprint,
                "code": response.status_code,
                "body": json.dumps(response.body, default=str),
            },
        )
