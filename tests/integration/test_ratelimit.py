"""The PostgreSQL GCRA limiter: replicas together never go faster than the rate; 429 pauses all.

Only lower bounds on time are asserted (a slow machine can be late, never early).
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.db.session import create_engine, dispose
from relaybox.common.ratelimit import (
    WARM_UP_S,
    WARM_UP_SAFETY,
    DatabaseClock,
    RateLimiter,
    Slot,
)
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
            await dispose(e)
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


async def test_a_slot_woken_for_too_late_is_given_up_and_booked_again(engine: AsyncEngine) -> None:
    limiter = RateLimiter(engine, "test.late", 1000.0, safety=0.02)
    labels = {"key": "test.late"}
    before = REGISTRY.get_sample_value("relaybox_ratelimit_forfeited_slots_total", labels) or 0
    await limiter.wait(Slot(time.monotonic() - 1.0))  # as if the process had stalled for 1 s
    after = REGISTRY.get_sample_value("relaybox_ratelimit_forfeited_slots_total", labels)
    assert after == before + 1


async def test_slots_of_replicas_are_spaced_on_the_databases_clock(
    engine: AsyncEngine, db_settings: DatabaseSettings
) -> None:
    """Two replicas booking in turn get local slots one interval apart, whatever the round
    trips: both map the database's clock, not "seconds from now", to their own."""
    rate = 20.0
    other_engine = create_engine(db_settings)
    try:
        first = RateLimiter(engine, "test.clock", rate)
        second = RateLimiter(other_engine, "test.clock", rate)
        slots = []
        for limiter in (first, second, first, second):
            slots.append((await limiter.reserve()).at)
    finally:
        await dispose(other_engine)
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert all(abs(gap - 1 / rate) < 0.015 for gap in gaps), gaps


def test_the_clock_keeps_the_reading_with_the_shortest_round_trip() -> None:
    clock = DatabaseClock()
    clock.observe(db_now=1000.010, sent=10.0, received=10.020)  # 20 ms round trip
    clock.observe(db_now=1000.0505, sent=10.050, received=10.051)  # 1 ms: a better reading
    assert abs(clock.offset - 990.0) < 0.001
    clock.observe(db_now=1000.200, sent=10.100, received=10.150)  # 50 ms, off by 75 ms: ignored
    assert abs(clock.offset - 990.0) < 0.001
    assert abs(clock.to_monotonic(1001.0) - 11.0) < 0.001


def test_a_process_books_with_a_wider_margin_while_it_warms_up(engine: AsyncEngine) -> None:
    limiter = RateLimiter(engine, "test.warm", 50.0, safety=0.03)
    assert limiter._booking_interval(100.0) == pytest.approx(0.02 * (1 + WARM_UP_SAFETY))
    assert limiter._booking_interval(100.0 + WARM_UP_S / 2) > limiter.interval
    assert limiter._booking_interval(100.0 + WARM_UP_S) == pytest.approx(0.02 * 1.03)
