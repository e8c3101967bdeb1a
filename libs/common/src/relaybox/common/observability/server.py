"""The /health, /ready and /metrics HTTP server that workers run beside their loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from litestar import Litestar, MediaType, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from relaybox.common.settings import HttpServerSettings

ReadyCheck = Callable[[], Awaitable[bool]]


def health_app(ready: ReadyCheck, registry: CollectorRegistry = REGISTRY) -> Litestar:
    """A tiny app: /health is liveness, /ready runs the worker's own check."""

    @get("/health", media_type=MediaType.JSON, sync_to_thread=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", media_type=MediaType.JSON)
    async def ready_handler() -> Response[dict[str, str]]:
        ok = await ready()
        return Response({"status": "ready" if ok else "not ready"}, status_code=200 if ok else 503)

    @get("/metrics", sync_to_thread=False)
    def metrics() -> Response[bytes]:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Litestar([health, ready_handler, metrics], openapi_config=None, logging_config=None)


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside a loop that owns its signals: the worker, not uvicorn, handles SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HealthServer:
    """Runs `health_app` on uvicorn inside the current event loop."""

    def __init__(self, settings: HttpServerSettings, ready: ReadyCheck) -> None:
        self._settings = settings
        self._ready = ready
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self._settings.port:
            return
        config = uvicorn.Config(
            health_app(self._ready),
            host=self._settings.host,
            port=self._settings.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve())

    async def stop(self) -> None:
        if self._server and self._task:
            self._server.should_exit = True
            await self._task
