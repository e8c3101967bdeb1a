"""The peers' HTTP endpoint: `python -m bench.peers.web celery|dramatiq --port N`.

Litestar with an asyncpg pool (the size of relaybox's API pool), as a team without an outbox
writes it: insert the row, commit, then hand the task to the queue — `send_email.delay(id)`
(Celery) or `send_email.send(id)` (Dramatiq). Both clients publish synchronously on the event
loop's thread (neither has an asyncio API); neither waits for a publisher confirm by default.
A crash between the commit and the publish leaves a row that no task will ever send.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State

from bench.api_servers import POOL_MAX, POOL_MIN, serve
from bench.peers import env

INSERT = "INSERT INTO peer_emails (id, to_address, subject, text_body) VALUES ($1, $2, $3, $4)"


class SendBody(msgspec.Struct, forbid_unknown_fields=True):
    to: str
    subject: str
    text: str | None = None


def enqueuer(kind: str) -> Callable[[str], object]:
    """The framework's own call that sends the task (imported only for that kind)."""
    if kind == "celery":
        from bench.peers.celery_app import send_email as celery_task

        delay: Callable[[str], object] = celery_task.delay
        return delay
    from bench.peers.dramatiq_app import send_email as dramatiq_actor

    return dramatiq_actor.send


def create_app(kind: str) -> Litestar:
    enqueue = enqueuer(kind)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        pool = await asyncpg.create_pool(
            env.get(env.DATABASE_URL), min_size=POOL_MIN, max_size=POOL_MAX
        )
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    @post("/send", status_code=202)
    async def send(request: Request[Any, Any, State], data: SendBody) -> Response[bytes]:
        pool: asyncpg.Pool = request.app.state.pool
        email_id = str(uuid.uuid4())
        await pool.execute(INSERT, email_id, data.to, data.subject, data.text)  # committed
        enqueue(email_id)  # the second write: to the broker
        body = {"id": email_id, "status": "PENDING"}
        return Response(msgspec.json.encode(body), status_code=202, media_type="application/json")

    @get("/ready", sync_to_thread=False)
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return Litestar([send, ready], lifespan=[lifespan], openapi_config=None, debug=False)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.web")
    parser.add_argument("kind", choices=["celery", "dramatiq"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve(create_app(args.kind), args.port)


if __name__ == "__main__":
    main()
