"""A global rate limiter shared by every replica: GCRA whose state is one PostgreSQL row per key.

`reserve` books the next free slot with one `UPDATE … RETURNING` (the row lock orders concurrent
replicas); `wait` sleeps until it. A caller books first and waits last, right before the provider
call, so nothing but the call itself sits between the slot and the request's arrival.
`pause` (a provider's 429 + Retry-After) pushes every replica's next slot past the pause; a
replica that booked a slot before the pause checks again after its sleep and re-books.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

WAIT = Histogram(
    "relaybox_ratelimit_wait_seconds",
    "Time spent waiting for a rate-limit slot",
    ("key",),
    buckets=(0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60),
)
PAUSES = Counter("relaybox_ratelimit_pauses_total", "Provider pauses (429 Retry-After)", ("key",))

_ENSURE = text("INSERT INTO rate_limits (key) VALUES (:key) ON CONFLICT (key) DO NOTHING")
_BOOK = text(
    """
    UPDATE rate_limits
    SET tat = greatest(tat, clock_timestamp(), coalesce(paused_until, '-infinity'))
              + make_interval(secs => :interval)
    WHERE key = :key
    RETURNING extract(epoch FROM tat - make_interval(secs => :interval) - clock_timestamp())
    """
)
_PAUSED_FOR = text(
    "SELECT greatest(0, coalesce(extract(epoch FROM paused_until - clock_timestamp()), 0))"
    " FROM rate_limits WHERE key = :key"
)
_PAUSE = text(
    """
    INSERT INTO rate_limits (key, paused_until)
    VALUES (:key, clock_timestamp() + make_interval(secs => :seconds))
    ON CONFLICT (key) DO UPDATE SET paused_until = greatest(
        coalesce(rate_limits.paused_until, '-infinity'), EXCLUDED.paused_until)
    """
)


@dataclass
class RateLimiter:
    """`rate` acquisitions per second for `key`, across every process sharing the database."""

    engine: AsyncEngine
    key: str
    rate: float
    safety: float = 0.0  # fraction added to the interval (a margin against the provider's clock)
    _ready: bool = False

    @property
    def interval(self) -> float:
        return (1.0 / self.rate) * (1.0 + self.safety)

    async def reserve(self) -> float:
        """Book the next free slot; the seconds until it starts (0 if it already has)."""
        if not self._ready:
            async with self.engine.begin() as conn:
                await conn.execute(_ENSURE, {"key": self.key})
            self._ready = True
        async with self.engine.begin() as conn:
            wait = await conn.scalar(_BOOK, {"key": self.key, "interval": self.interval})
        return max(0.0, float(wait or 0))

    async def wait(self, wait_s: float) -> float:
        """Sleep until a reserved slot; if a 429 paused the key meanwhile, wait and book again."""
        started = time.monotonic()
        while True:
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            async with self.engine.connect() as conn:
                paused = float(await conn.scalar(_PAUSED_FOR, {"key": self.key}) or 0)
            if paused <= 0:
                break
            await asyncio.sleep(paused)
            wait_s = await self.reserve()
        waited = time.monotonic() - started
        WAIT.labels(self.key).observe(waited)
        return waited

    async def acquire(self) -> float:
        """Reserve a slot and wait for it; returns the seconds waited."""
        return await self.wait(await self.reserve())

    async def pause(self, seconds: float) -> None:
        """Stop every replica from sending for `seconds` (a 429 with Retry-After)."""
        PAUSES.labels(self.key).inc()
        async with self.engine.begin() as conn:
            await conn.execute(_PAUSE, {"key": self.key, "seconds": seconds})
