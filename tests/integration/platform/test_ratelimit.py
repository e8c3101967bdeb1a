"""The PostgreSQL GCRA limiter: replicas together never go faster than the rate; 429 pauses all.

Only lower bounds on time are asserted (a slow machine can be late, never early).
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.db.session import create_engine, dispose
from relaybox.common.settings import DatabaseSettings
from relaybox.consumer.ratelimit import (
    WARM_UP_S,
    WARM_UP_SAFETY,
    DatabaseClock,
    LimiterClosedError,
    RateLimiter,
    Slot,
)

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


async def tat_ahead_s(engine: AsyncEngine, key: str) -> float:
    async with engine.connect() as conn:
        ahead = await conn.scalar(
            text(
                "SELECT extract(epoch FROM tat - clock_timestamp())::float8 "
                "FROM rate_limits WHERE key = :key"
            ),
            {"key": key},
        )
    return float(ahead)


async def test_a_process_books_no_further_ahead_than_its_horizon(engine: AsyncEngine) -> None:
    limiter = RateLimiter(engine, "test.horizon", 10.0, horizon_s=0.25)
    started = time.monotonic()
    ahead = []
    for _ in range(8):  # 0.8 s of slots
        slot = await limiter.reserve()
        ahead.append(slot.at - time.monotonic())
    # The first few fit in the horizon at once; each later one waited until it came in reach.
    assert max(ahead) <= 0.25 + EPSILON, ahead
    assert time.monotonic() - started >= 0.8 - 0.25 - 0.11 - EPSILON
    assert await tat_ahead_s(engine, "test.horizon") <= 0.25 + 0.11 + EPSILON


async def test_a_released_slot_goes_to_the_next_caller_of_the_process(engine: AsyncEngine) -> None:
    limiter = RateLimiter(engine, "test.spare", 2.0)
    await limiter.reserve()  # starts now
    # The one released is an interval ahead: a slot already due would be dropped as late by a
    # caller more than 5 ms after it (late_limit_s), which a loaded machine can be.
    ahead = await limiter.reserve()
    limiter.release(ahead)
    assert await limiter.reserve() == ahead
    # nothing more was booked (a new process books with its warm-up margin)
    assert await tat_ahead_s(engine, "test.spare") <= 2 * 0.5 * (1 + WARM_UP_SAFETY) + EPSILON


async def test_close_gives_held_slots_back_and_wakes_waiters(engine: AsyncEngine) -> None:
    limiter = RateLimiter(engine, "test.close", 1.0)
    used = await limiter.reserve()
    await limiter.wait(used)
    held = [await limiter.reserve() for _ in range(3)]  # 3 s of slots ahead
    assert await tat_ahead_s(engine, "test.close") > 2.5
    waiting = asyncio.create_task(limiter.wait(held[0]))
    await asyncio.sleep(0.05)
    await limiter.close()
    with pytest.raises(LimiterClosedError):
        await waiting
    with pytest.raises(LimiterClosedError):
        await limiter.reserve()
    # Back to the end of the slot used last: the next process starts right after it.
    assert await tat_ahead_s(engine, "test.close") <= 1.0 * (1 + WARM_UP_SAFETY) + EPSILON


async def test_close_gives_back_only_slots_no_later_booking_follows(engine: AsyncEngine) -> None:
    mine = RateLimiter(engine, "test.interleaved", 1.0)
    other = RateLimiter(engine, "test.interleaved", 1.0)
    await mine.reserve()
    await other.reserve()  # booked after mine: mine is no longer the last one
    before = await tat_ahead_s(engine, "test.interleaved")
    await mine.close()
    assert await tat_ahead_s(engine, "test.interleaved") == pytest.approx(before, abs=0.05)
