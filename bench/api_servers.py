"""The servers `api_accept` compares, each run the same way: `python -m bench.api_servers KIND`.

- `relaybox`: the real API (`create_app(ApiSettings())`, settings from `RELAYBOX_*`, JSON logs).
- `bare`: Litestar + an asyncpg pool doing the two INSERTs (emails + outbox) in one transaction.
- `bare-full`: `bare` plus the rest of the SQL the real API runs (idempotency lock, lookup and
  insert, NOTIFY), to split framework cost from SQL cost.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State

from relaybox.common import runtime

POOL_MIN, POOL_MAX = 30, 40  # the real API's SQLAlchemy pool: pool_size 30 + max_overflow 10

INSERT_EMAIL = """
INSERT INTO emails (id, tenant_id, to_address, from_address, subject, text_body, html_body)
VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING created_at
"""
INSERT_OUTBOX = """
INSERT INTO outbox (message_id, destination, routing_key, payload, headers)
VALUES ($1, 'work', 'email.send', $2::jsonb, $3::jsonb)
"""
LOCK_KEY = "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))"
FIND_KEY = """
SELECT request_hash, status_code, response FROM idempotency_keys
WHERE client_id = $1 AND scope = 'email.send' AND key = $2
  AND created_at > now() - make_interval(hours => 24)
"""
STORE_KEY = """
INSERT INTO idempotency_keys (client_id, scope, key, request_hash, status_code, response)
VALUES ($1, 'email.send', $2, $3, 202, $4::jsonb)
ON CONFLICT (client_id, scope, key) DO NOTHING
"""


class SendBody(msgspec.Struct, forbid_unknown_fields=True):
    to: str
    subject: str
    text: str | None = None
    html: str | None = None


def bare_app(database_url: str, *, full: bool) -> Litestar:
    """The baseline: no auth, no validation beyond msgspec, raw asyncpg."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        pool = await asyncpg.create_pool(database_url, min_size=POOL_MIN, max_size=POOL_MAX)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    @post("/send", status_code=202)
    async def send(request: Request[Any, Any, State], data: SendBody) -> Response[bytes]:
        pool: asyncpg.Pool = request.app.state.pool
        email_id = uuid.uuid4()
        key = request.headers.get("idempotency-key", "")
        async with pool.acquire() as conn, conn.transaction():
            if full:
                await conn.fetchval(LOCK_KEY, f"bench:email.send:{key}")
                await conn.fetchrow(FIND_KEY, "bench", key)
            created_at = await conn.fetchval(
                INSERT_EMAIL,
                email_id,
                "bench",
                data.to,
                "relaybox@localhost",
                data.subject,
                data.text,
                data.html,
            )
            await conn.execute(INSERT_OUTBOX, uuid.uuid4(), json.dumps({"id": str(email_id)}), "{}")
            body = {"id": str(email_id), "status": "PENDING", "createdAt": created_at.isoformat()}
            if full:
                await conn.execute(STORE_KEY, "bench", key, "0" * 64, json.dumps(body))
                await conn.execute("NOTIFY relaybox_outbox")
        return Response(msgspec.json.encode(body), status_code=202, media_type="application/json")

    @get("/ready", sync_to_thread=False)
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return Litestar([send, ready], lifespan=[lifespan], openapi_config=None, debug=False)


def relaybox_app() -> Any:
    """The real API exactly as `python -m relaybox.api serve` builds it."""
    from relaybox.api.app import create_app
    from relaybox.api.settings import ApiSettings
    from relaybox.common.observability.logging import configure_logging

    settings = ApiSettings()
    configure_logging("api", settings.log)
    return create_app(settings)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.api_servers")
    parser.add_argument("kind", choices=["relaybox", "bare", "bare-full"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.kind == "relaybox":
        app = relaybox_app()
    else:
        url = os.environ["RELAYBOX_DATABASE__URL"].replace("+asyncpg", "")
        app = bare_app(url, full=args.kind == "bare-full")
    serve(app, args.port)


def serve(app: Any, port: int) -> None:
    """Run `app` as `python -m relaybox.api` runs the API, whatever the kind: one uvicorn worker
    with its options, after freezing the startup objects out of the garbage collector's view."""
    runtime.freeze_startup_objects()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
