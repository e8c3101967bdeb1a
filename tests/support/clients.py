"""HTTP clients of the API for tests: the app on the test's engine, in the test's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.settings import ApiSettings

BASE_URL = "http://relaybox.test"


@asynccontextmanager
async def asgi_client(app: Any, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` through an ASGI transport, presenting `token` if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=headers) as c:
        yield c


@asynccontextmanager
async def api_client(
    settings: ApiSettings,
    engine: AsyncEngine,
    token: str | None = None,
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """The API built from `settings` (its own rate-limit store, `clock` if given) on the
    test's engine, called with `token`."""
    app = create_app(settings, engine=engine, **({"clock": clock} if clock else {}))
    async with asgi_client(app, token) as client:
        yield client
