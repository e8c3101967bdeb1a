"""The PostgreSQL GCRA limiter: replicas together never go faster than the rate; 429 pauses all.

Only lower bounds on time are asserted (a slow machine can be late, never early).
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.db.session import create_engine
from relaybox.common.ratelimit import RateLimiter
from relaybox.common.settings import DatabaseSettings

EPSILON = 0.005


async def test_four_replicas_share_one_rate(
    engine: AsyncEngine, db_settings: DatabaseSettings
) -> None:
    rate, per_replica = 50.0, 10
    engines = [create_engine(db_settings) for _ in range(4)]
    limiters = [RateLimiter(e, "test.shared", rate) for e in engines]
    started = time.monotonic()
    done: list[float] = []

    async def replica(limiter: RateLimiter) -> None:
        for _ in range(per_replica):
            await limiter.acquire()
            done.append(time.monotonic() - started)

    try:
        await asyncio.gather(*(replica(limiter) for limiter in limiters))
    finally:
        for e in engines:
            await e.dispose()
    done.sort()
    # The k-th acquisition overall cannot complete before k intervals have passed.
    for k, at in enumerate(done):
        assert at >= k / rate - EPSILON, (k, at)


async def test_a_pause_holds_every_replica(engine: AsyncEngine) -> None:
    first = RateLimiter(engine, "test.pause", 1000.0)
    second = RateLimiter(engine, "test.pause", 1000.0)
    await first.acquire()
    await first.pause(0.4)
    started = time.monotonic()
    await second.acquire()
    assert time.monotonic() - started >= 0.4 - EPSILON


async def test_keys_are_independent(engine: AsyncEngine) -> None:
    slow = RateLimiter(engine, "test.slow", 0.1)
    fast = RateLimiter(engine, "test.fast", 1000.0)
    await slow.acquire()
    await slow.pause(30)
    started = time.monotonic()
    for _ in range(5):
        await fast.acquire()
    assert time.monotonic() - started < 30  # the other key's pause did not apply
