"""A global rate limiter shared by every replica: GCRA whose state is one PostgreSQL row per key.

`reserve` books the next free slot with one statement (the row lock orders concurrent replicas)
and answers when the slot starts, on this process's monotonic clock; `wait` sleeps until then. A
caller books first and waits last, right before the provider call, so nothing but the call
itself sits between the slot and the request's arrival: the time the caller spends in between
(claiming its row, say) does not shift the slot.

`pause` (a provider's 429 + Retry-After) pushes every replica's next slot past the pause. A
replica that booked its slot before the pause learns of it by a check shortly *before* its slot
(`PAUSE_CHECK_LEAD_S`; checking after the sleep would put that round trip between the slot and
the request) and books again once the pause is over.

Every statement runs alone on the pooled driver connection, in autocommit: one round trip each.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.db.session import run_on_driver

WAIT = Histogram(
    "relaybox_ratelimit_wait_seconds",
    "Time spent waiting for a rate-limit slot",
    ("key",),
    buckets=(0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60),
)
PAUSES = Counter("relaybox_ratelimit_pauses_total", "Provider pauses (429 Retry-After)", ("key",))

PAUSE_CHECK_LEAD_S = 0.02
"""How long before its slot a booked replica checks for a pause set since it booked."""

# Book the slot after the theoretical arrival time (or now, or the end of a pause, whichever is
# latest) and answer how far ahead it starts. The first booking of a key creates its row.
_BOOK = """
INSERT INTO rate_limits AS r (key, tat)
VALUES ($1::text, clock_timestamp() + make_interval(secs => $2::float8))
ON CONFLICT (key) DO UPDATE SET
    tat = greatest(r.tat, clock_timestamp(), coalesce(r.paused_until, '-infinity'))
          + make_interval(secs => $2::float8)
RETURNING extract(epoch FROM r.tat - make_interval(secs => $2::float8) - clock_timestamp())
"""
_PAUSED_FOR = """
SELECT greatest(0, coalesce(extract(epoch FROM paused_until - clock_timestamp()), 0))::float8
FROM rate_limits WHERE key = $1::text
"""
_PAUSE = """
INSERT INTO rate_limits AS r (key, paused_until)
VALUES ($1::text, clock_timestamp() + make_interval(secs => $2::float8))
ON CONFLICT (key) DO UPDATE SET
    paused_until = greatest(coalesce(r.paused_until, '-infinity'), EXCLUDED.paused_until)
"""


@dataclass(frozen=True)
class Slot:
    """A booked slot: it starts at `at` on `time.monotonic()`'s clock."""

    at: float = field(default_factory=time.monotonic)

    @property
    def wait_s(self) -> float:
        """Seconds from now until the slot starts (0 once it has)."""
        return max(0.0, self.at - time.monotonic())


@dataclass
class RateLimiter:
    """`rate` acquisitions per second for `key`, across every process sharing the database."""

    engine: AsyncEngine
    key: str
    rate: float
    safety: float = 0.0  # fraction added to the interval (a margin against arrival jitter)

    @property
    def interval(self) -> float:
        return (1.0 / self.rate) * (1.0 + self.safety)

    async def reserve(self) -> Slot:
        """Book the next free slot."""

        async def book(conn: asyncpg.Connection, _repeated: bool) -> float:
            # A repeat after a lost connection may book a second slot: one slot goes unused.
            return float(await conn.fetchval(_BOOK, self.key, self.interval) or 0.0)

        ahead = await run_on_driver(self.engine, book)
        return Slot(time.monotonic() + max(0.0, ahead))

    async def wait(self, slot: Slot) -> float:
        """Sleep until `slot`; if a 429 paused the key since it was booked, wait out the pause
        and book again. Returns the seconds waited."""
        started = time.monotonic()
        while True:
            await asyncio.sleep(max(0.0, slot.wait_s - PAUSE_CHECK_LEAD_S))
            paused = await self._paused_for()
            if paused <= 0:
                break
            await asyncio.sleep(paused)
            slot = await self.reserve()
        await asyncio.sleep(slot.wait_s)
        waited = time.monotonic() - started
        WAIT.labels(self.key).observe(waited)
        return waited

    async def acquire(self) -> float:
        """Reserve a slot and wait for it; returns the seconds waited."""
        return await self.wait(await self.reserve())

    async def pause(self, seconds: float) -> None:
        """Stop every replica from sending for `seconds` (a 429 with Retry-After)."""
        PAUSES.labels(self.key).inc()

        async def pause(conn: asyncpg.Connection, _repeated: bool) -> None:
            await conn.execute(_PAUSE, self.key, float(seconds))

        await run_on_driver(self.engine, pause)

    async def _paused_for(self) -> float:
        async def paused_for(conn: asyncpg.Connection, _repeated: bool) -> float:
            return float(await conn.fetchval(_PAUSED_FOR, self.key) or 0.0)

        return await run_on_driver(self.engine, paused_for)
