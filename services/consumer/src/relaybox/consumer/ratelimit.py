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

A slot is also given up when the process wakes for it too late (a busy event loop, a collection,
the scheduler): sending then would put this request right behind the next replica's, and a
provider that counts requests in a sliding window sees a burst. The margin that absorbs such
jitter is `safety` (the interval is stretched by that fraction: over a window of W seconds,
arrivals can drift by `safety * W` and still fit); a caller later than half of it books again.

Every statement runs alone on the pooled driver connection, in autocommit: one round trip each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.db.session import run_on_driver
from relaybox.common.errors import RelayboxError

log = logging.getLogger(__name__)

WAIT = Histogram(
    "relaybox_ratelimit_wait_seconds",
    "Time spent waiting for a rate-limit slot",
    ("key",),
    buckets=(0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60),
)
PAUSES = Counter("relaybox_ratelimit_pauses_total", "Provider pauses (429 Retry-After)", ("key",))
RETURNED = Counter(
    "relaybox_ratelimit_returned_slots_total",
    "Booked slots given back unused (a stopping process, a message not sent)",
    ("key",),
)
FORFEITED = Counter(
    "relaybox_ratelimit_forfeited_slots_total",
    "Slots given up because the process woke too late for them (and booked again)",
    ("key",),
)

PAUSE_CHECK_LEAD_S = 0.02
"""How long before its slot a booked replica checks for a pause set since it booked."""
MAX_HORIZON_S = 1e9
"""What an unbounded horizon is written as in SQL (intervals have no infinity)."""
MAX_FORFEITS = 3
"""Late slots given up in a row before a caller sends anyway (a machine too busy to keep time
must still make progress; the provider's 429, if it comes, is handled as usual)."""

# Book the slot after the theoretical arrival time (or now, or the end of a pause, whichever is
# latest), unless it starts further ahead than the caller may hold ($3 s): then nothing changes
# and no row comes back. Answers when the slot starts and the time now, on the database's clock,
# and the key's new `tat` (the slot's end, which names it when it is given back).
_NEXT_FREE = "greatest(r.tat, clock_timestamp(), coalesce(r.paused_until, '-infinity'))"
_BOOK = f"""
UPDATE rate_limits AS r SET tat = {_NEXT_FREE} + make_interval(secs => $2::float8)
WHERE r.key = $1::text AND {_NEXT_FREE} <= clock_timestamp() + make_interval(secs => $3::float8)
RETURNING extract(epoch FROM r.tat - make_interval(secs => $2::float8))::float8 AS slot,
          r.tat - make_interval(secs => $2::float8) AS starts, r.tat AS ends,
          extract(epoch FROM clock_timestamp())::float8 AS now
"""  # noqa: S608 - constants of the code
# When the next free slot starts (the key's row is created if it has none yet).
_NEXT = f"""
WITH created AS (
    INSERT INTO rate_limits (key, tat) VALUES ($1::text, '-infinity')
    ON CONFLICT (key) DO NOTHING
)
SELECT extract(epoch FROM {_NEXT_FREE})::float8 AS slot,
       extract(epoch FROM clock_timestamp())::float8 AS now
FROM rate_limits AS r WHERE r.key = $1::text
"""  # noqa: S608 - constants of the code
# A slot its booker will not use, given back if no later one was booked after it.
_GIVE_BACK = """
UPDATE rate_limits SET tat = $3::timestamptz WHERE key = $1::text AND tat = $2::timestamptz
"""
_CLOCK = "SELECT extract(epoch FROM clock_timestamp())::float8"
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


class LimiterClosedError(RelayboxError):
    """The limiter is closed (its process is stopping): it books no more slots."""


@dataclass(frozen=True)
class Slot:
    """A booked slot: it starts at `at` on `time.monotonic()`'s clock. `starts`/`ends` are its
    bounds on the database's clock, which name it when it is given back."""

    at: float = field(default_factory=time.monotonic)
    starts: datetime | None = None
    ends: datetime | None = None

    @property
    def wait_s(self) -> float:
        """Seconds from now until the slot starts (0 once it has)."""
        return max(0.0, self.at - time.monotonic())


WARM_UP_S = 2.0
WARM_UP_SAFETY = 0.10
"""A process is least punctual in its first seconds of sending: cold connections and code paths,
and (as replicas start together) the machine busy starting the rest. bench.rate_precision saw
the first requests arrive 15-45 ms after their slots, 2-3 ms later on. Bookings in a process's
first WARM_UP_S keep a margin of at least WARM_UP_SAFETY (costs ~0.1 s of sending per start)."""
CALIBRATION_READINGS = 5
"""Readings of the database clock taken one after the other before a process's first booking
(concurrent first bookings have long round trips: a poor first offset)."""
OFFSET_REFRESH_S = 30.0
"""After this long, a noisier reading may replace the database clock offset (the clocks drift)."""


@dataclass
class DatabaseClock:
    """This process's `time.monotonic()` mapped to the database's clock, the clock of every
    slot: each replica turns the same slot into the same local moment.

    The offset comes from the bookings themselves, NTP-style: a booking's answer carries the
    database's `clock_timestamp()`, read at some moment between sending the statement and
    reading its answer, so the reading with the shortest round trip pins the offset closest
    (to within half of it). Counting "seconds ahead" from either end of the round trip instead
    moves the slot by a waited-for row lock or a busy event loop: tens of milliseconds, enough
    to put two replicas' requests back to back.
    """

    offset: float = 0.0  # database epoch seconds minus monotonic seconds
    round_trip: float = math.inf
    learned_at: float = -math.inf

    def observe(self, db_now: float, sent: float, received: float) -> None:
        """Learn from one reading of the database clock taken between `sent` and `received`."""
        round_trip = received - sent
        stale = received - self.learned_at > OFFSET_REFRESH_S
        if round_trip <= self.round_trip or (stale and round_trip <= 2 * self.round_trip + 0.001):
            self.offset = db_now - (sent + received) / 2
            self.round_trip = round_trip
            self.learned_at = received

    def to_monotonic(self, db_time: float) -> float:
        return db_time - self.offset


@dataclass
class RateLimiter:
    """`rate` acquisitions per second for `key`, across every process sharing the database.

    A process never holds a slot that starts more than `horizon_s` ahead: a caller that would
    get a later one waits, holding nothing, until the next free slot comes within reach. So a
    process that dies leaks at most `horizon_s` of the key's time. A slot its caller does not
    use (`release`) goes to the process's next caller; `close` (a graceful stop) gives every
    slot still held back to the key, and callers still waiting get `LimiterClosedError`.
    """

    engine: AsyncEngine
    key: str
    rate: float
    safety: float = 0.0  # fraction added to the interval (a margin against arrival jitter)
    horizon_s: float = math.inf
    _clock: DatabaseClock = field(default_factory=lambda: DatabaseClock())
    _calibrating: asyncio.Lock = field(default_factory=asyncio.Lock)
    _first_booking: float | None = None
    _held: set[Slot] = field(default_factory=set)  # booked, not yet used nor given back
    _spare: list[Slot] = field(default_factory=list)  # held, released by their caller
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def interval(self) -> float:
        return (1.0 / self.rate) * (1.0 + self.safety)

    @property
    def late_limit_s(self) -> float:
        """How late a waiter may wake for its slot and still use it: half the drift the
        safety margin absorbs over the provider's window (taken as 1 s, or one interval for
        rates under 1/s), and never under 5 ms."""
        window_s = max(1.0, 1.0 / self.rate)
        return max(0.005, self.safety * window_s / 2)

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    async def calibrate(self) -> None:
        """Read the database clock a few times in a row (done once, before the first booking)."""
        async with self._calibrating:
            if self._clock.learned_at > -math.inf:
                return

            async def read(conn: asyncpg.Connection, _repeated: bool) -> None:
                for _ in range(CALIBRATION_READINGS):
                    sent = time.monotonic()
                    db_now = await conn.fetchval(_CLOCK)
                    self._clock.observe(db_now, sent, time.monotonic())

            await run_on_driver(self.engine, read)

    async def reserve(self) -> Slot:
        """A slot of this process's own that is still ahead (one a caller released), else the
        next free one, booked; waits while that one lies beyond the horizon. Raises
        `LimiterClosedError` once the limiter is closed."""
        return (await self._booked(1, spare=True))[0]

    async def reserve_many(self, count: int) -> list[Slot]:
        """`count` consecutive slots, booked with one statement (a fan-out books a block where
        a single send books one slot): the first is taken with `wait`, which checks for a pause,
        the others with `take`. Waits while the block lies beyond the horizon; raises
        `LimiterClosedError` once the limiter is closed."""
        return await self._booked(count, spare=False)

    async def _booked(self, count: int, *, spare: bool) -> list[Slot]:
        if self._clock.learned_at == -math.inf:
            await self.calibrate()
        while True:
            if self.closed:
                raise LimiterClosedError(f"rate limiter {self.key!r} is closed")
            if spare and (released := self._take_spare()) is not None:
                return [released]
            slots, next_free = await self._book(count)
            if slots:
                return slots
            # Look again when the next free slot comes within the horizon (or the limiter closes).
            reach = self._clock.to_monotonic(next_free) - self.horizon_s - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), max(0.0, reach) + 0.001)

    async def _book(self, count: int = 1) -> tuple[list[Slot], float]:
        """One booking of `count` consecutive slots: the slots, or none and when the next free
        slot starts (database clock)."""

        async def book(conn: asyncpg.Connection, _repeated: bool) -> tuple[list[Slot], float]:
            # A repeat after a lost connection may book a second block: it goes unused.
            sent = time.monotonic()
            interval = self._booking_interval(sent)
            horizon = min(self.horizon_s, MAX_HORIZON_S)
            row = await conn.fetchrow(_BOOK, self.key, interval * count, horizon)
            if row is None:  # beyond the horizon, or the key has no row yet
                sent = time.monotonic()
                row = await conn.fetchrow(_NEXT, self.key)
                if row is not None:
                    self._clock.observe(row["now"], sent, time.monotonic())
                return [], row["slot"] if row is not None else -math.inf
            self._clock.observe(row["now"], sent, time.monotonic())
            at, starts = self._clock.to_monotonic(row["slot"]), row["starts"]
            step = timedelta(seconds=interval)
            # Each slot is named by its bounds; the last one's end is the key's new `tat` exactly.
            bounds = [starts + i * step for i in range(count)] + [row["ends"]]
            slots = [Slot(at + i * interval, bounds[i], bounds[i + 1]) for i in range(count)]
            self._held.update(slots)
            return slots, row["slot"]

        return await run_on_driver(self.engine, book)

    def _take_spare(self) -> Slot | None:
        """The earliest released slot that can still be used on time (late ones are dropped)."""
        now = time.monotonic()
        usable = [s for s in self._spare if s.at - now > -self.late_limit_s]
        self._held.difference_update(s for s in self._spare if s not in usable)
        self._spare = sorted(usable, key=lambda s: s.at)
        return self._spare.pop(0) if self._spare else None

    def _booking_interval(self, now: float) -> float:
        """The interval, widened while this process warms up (`WARM_UP_S`)."""
        if self._first_booking is None:
            self._first_booking = now
        if now - self._first_booking < WARM_UP_S and self.safety < WARM_UP_SAFETY:
            return (1.0 / self.rate) * (1.0 + WARM_UP_SAFETY)
        return self.interval

    def release(self, slot: Slot) -> None:
        """`slot` will not be used by its caller: the process's next caller takes it (or
        `close` gives it back)."""
        if slot in self._held and not self.closed:
            self._spare.append(slot)

    async def close(self) -> None:
        """Book nothing more, wake every waiting caller with `LimiterClosedError`, and give the
        slots still held back to the key (those no later booking follows). Idempotent."""
        self._closing.set()
        held, self._held, self._spare = self._held, set(), []
        await self._give_back(held)

    async def _give_back(self, slots: set[Slot]) -> None:
        """Pull the key's time back over each slot that is still the last one booked (latest
        first, so a run of this process's own slots at the end all come back)."""
        latest_first = sorted(slots, key=lambda s: s.at, reverse=True)
        if not latest_first:
            return

        async def give_back(conn: asyncpg.Connection, _repeated: bool) -> int:
            returned = 0
            for slot in latest_first:
                status = await conn.execute(_GIVE_BACK, self.key, slot.ends, slot.starts)
                returned += status == "UPDATE 1"
            return returned

        try:
            returned = await run_on_driver(self.engine, give_back)
        except (OSError, asyncpg.PostgresError):  # best effort: a crash leaks as much
            log.warning("could not give rate-limit slots back", extra={"key": self.key})
            return
        RETURNED.labels(self.key).inc(returned)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, or raise `LimiterClosedError` as soon as the limiter closes."""
        if not self.closed and seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)
        if self.closed:
            raise LimiterClosedError(f"rate limiter {self.key!r} is closed")

    async def wait(self, slot: Slot) -> float:
        """Sleep until `slot` and take it; if a 429 paused the key since it was booked, wait out
        the pause and book again; if this process woke too late for the slot, book again.
        Returns the seconds waited. Interrupted, it releases the slot; closed meanwhile, it
        raises `LimiterClosedError` (the slot went back with `close`)."""
        started = time.monotonic()
        forfeits = 0
        try:
            while True:
                await self._sleep(slot.wait_s - PAUSE_CHECK_LEAD_S)
                paused = await self._paused_for()
                if paused > 0:
                    await self._sleep(paused)
                else:
                    await self._sleep(slot.wait_s)
                    late = time.monotonic() - slot.at > self.late_limit_s
                    if not late or forfeits >= MAX_FORFEITS:
                        break
                    forfeits += 1
                    FORFEITED.labels(self.key).inc()
                self._held.discard(slot)  # passed by a pause or a late wake-up: gone
                slot = await self.reserve()
        except BaseException:
            self.release(slot)
            raise
        self._held.discard(slot)  # used (no await since the last check that the limiter is open)
        waited = time.monotonic() - started
        WAIT.labels(self.key).observe(waited)
        return waited

    async def take(self, slot: Slot) -> None:
        """Sleep until `slot`, one of a block after the first, and take it (the block's first
        slot checked for a pause; a block spans a fraction of a second). Raises
        `LimiterClosedError` if the limiter closes meanwhile (the slot went back with `close`);
        interrupted, it releases the slot."""
        try:
            await self._sleep(slot.wait_s)
        except BaseException:
            self.release(slot)
            raise
        self._held.discard(slot)

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
