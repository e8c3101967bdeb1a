"""Liveness, readiness (ready means the database answers; the broker is not needed) and the
Prometheus metrics: the public operations routes."""

from __future__ import annotations

import msgspec
from litestar import Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.openapi import PUBLIC

PUBLIC_OPS = {PUBLIC: True}


class Readiness(msgspec.Struct):
    status: str
    database: str


@get("/health", opt=PUBLIC_OPS, tags=["ops"], sync_to_thread=False, summary="Liveness")
def health() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/ready",
    opt=PUBLIC_OPS,
    tags=["ops"],
    summary="Readiness: 200 when the database answers, else 503",
    responses={503: ResponseSpec(Readiness, description="The database does not answer")},
)
async def ready(state: State) -> Response[Readiness]:
    engine: AsyncEngine = state.engine
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        return Response(Readiness("not ready", type(exc).__name__), status_code=503)
    return Response(Readiness("ready", "ok"))


@get(
    "/metrics",
    opt=PUBLIC_OPS,
    tags=["ops"],
    media_type="text/plain",
    sync_to_thread=False,
    summary="Prometheus metrics (text exposition format)",
)
def metrics() -> Response[bytes]:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
