"""What every scene does over HTTP: JSON calls that fail loudly, polling until a state, and the
mock providers' call ledger."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

Json = dict[str, Any]


class DemoError(Exception):
    """A call answered what the demo did not expect (the scene fails with this reason)."""


RETRY_STATUSES = (429, 503)
""""Not now" answers: the API's database out of reach (e.g. PostgreSQL's connections all taken
by others on a shared server) or the per-client limit; both carry `Retry-After`."""
RETRY_BUDGET_S = 90.0
RETRIED: Counter[str] = Counter()
"""`METHOD status` → how many times a call was repeated after a "not now" answer (reported)."""


async def call(
    client: httpx.AsyncClient, method: str, url: str, *, expect: tuple[int, ...] = (200,), **kw: Any
) -> Json:
    """The JSON answer of one request; `DemoError` with the status and body otherwise. A 429 or
    503 is repeated after its `Retry-After`, as a client should, for up to `RETRY_BUDGET_S`
    (every creating call of the demo is idempotent: a key, a client id or an event id)."""
    response = await send(client, method, url, **kw)
    if response.status_code not in expect:
        raise DemoError(f"{method} {url} answered {response.status_code}: {response.text[:300]}")
    if not response.content:
        return {}
    body = response.json()
    return body if isinstance(body, dict) else {"value": body}


async def send(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> httpx.Response:
    """One request, repeated after a 429 or 503 as its `Retry-After` says (see `call`)."""
    deadline = time.monotonic() + RETRY_BUDGET_S
    while True:
        response = await client.request(method, url, **kw)
        if response.status_code not in RETRY_STATUSES or time.monotonic() > deadline:
            return response
        RETRIED[str(response.status_code)] += 1
        await asyncio.sleep(min(_retry_after(response), 5.0))


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(float(response.headers.get("Retry-After", "1")), 0.1)
    except ValueError:
        return 1.0


async def poll(
    fetch: Callable[[], Awaitable[Json]],
    done: Callable[[Json], bool],
    timeout_s: float,
    *,
    interval_s: float = 0.25,
    seen: Callable[[Json], None] | None = None,
) -> Json:
    """Fetch until `done` holds or `timeout_s` passes; the last answer either way (the scene's
    checks judge it). `seen` is told every answer (to record the states passed through)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await fetch()
        if seen is not None:
            seen(value)
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval_s)


def timeline(log: list[tuple[float, str]]) -> str:
    """`PENDING (+0.0 s) → SENT (+1.2 s)`."""
    return " → ".join(f"{state} (+{at:.1f} s)" for at, state in log)


class StateLog:
    """The states an object passed through, with when each was first seen."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.entries: list[tuple[float, str]] = []

    def note(self, state: str) -> None:
        if not self.entries or self.entries[-1][1] != state:
            self.entries.append((time.monotonic() - self.started, state))

    def __str__(self) -> str:
        return timeline(self.entries)

    def states(self) -> list[str]:
        return [state for _at, state in self.entries]


async def ledger(mock: httpx.AsyncClient, provider: str) -> dict[str, Json]:
    """One mock provider's ledger entries (`GET /ledger`): key → {calls, acceptedAt}."""
    entries: dict[str, Json] = (await call(mock, "GET", "/ledger"))[provider]["entries"]
    return entries
