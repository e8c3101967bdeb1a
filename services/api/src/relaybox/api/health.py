"""Liveness and readiness: ready means the database answers (the broker is not needed)."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine


@get("/health", opt={"public": True}, tags=["ops"], sync_to_thread=False)
def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", opt={"public": True}, tags=["ops"])
async def ready(state: State) -> Response[dict[str, str]]:
    engine: AsyncEngine = state.engine
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        return Response({"status": "not ready", "database": type(exc).__name__}, status_code=503)
    return Response({"status": "ready", "database": "ok"})
