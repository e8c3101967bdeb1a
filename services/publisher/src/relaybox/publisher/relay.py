"""The relay loop: claim with SKIP LOCKED, publish with confirms, delete what was confirmed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import aiormq
import asyncpg
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection
from aiormq.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError, PublishError
from pamqp import commands as spec
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.db.session import asyncpg_dsn, create_engine, dispose, run_on_driver
from relaybox.common.faults import failpoint
from relaybox.common.messaging.broker import connect
from relaybox.common.messaging.topology import Topology
from relaybox.common.outbox import EVENTS, NOTIFY_CHANNEL
from relaybox.publisher import metrics
from relaybox.publisher.confirms import Outgoing, Verdict, publish_confirmed
from relaybox.publisher.settings import PublisherSettings

log = logging.getLogger(__name__)

# The batch's statements run on the pooled asyncpg connection itself (the relay is a hot loop:
# SQLAlchemy's per-statement work cost more CPU than the statements). jsonb columns arrive
# decoded, by the codec SQLAlchemy's dialect installs on its connections.
CLAIM = """
SELECT id, message_id, destination, routing_key, payload, headers, created_at, publish_attempts
FROM outbox
WHERE available_at <= now()
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
DELETE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"
POSTPONE = """
UPDATE outbox
SET publish_attempts = publish_attempts + 1,
    last_error = $2::text,
    available_at = now() + make_interval(secs => $3::float8)
WHERE id = $1
"""
BACKLOG = text(
    "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox"
)
PERSISTENT, NOT_PERSISTENT = 2, 1  # AMQP delivery modes
TRANSIENT = (
    OSError,
    ConnectionError,
    AMQPError,
    ChannelInvalidStateError,
    TimeoutError,
    OperationalError,
    DBAPIError,
    asyncpg.PostgresError,
)


async def _rollback(conn: asyncpg.Connection) -> None:
    """End a failed batch's transaction (its rows stay, unlocked), unless the connection is
    lost anyway."""
    if not conn.is_closed() and conn.is_in_transaction():
        with contextlib.suppress(Exception):
            await conn.execute("ROLLBACK")


@dataclass(frozen=True)
class Outcome:
    """What happened to one row: published (error None) or refused by the broker."""

    row_id: int
    error: str | None = None


class Relay:
    """One publisher replica. Several can run at once: SKIP LOCKED gives each row to one of them."""

    def __init__(self, settings: PublisherSettings, engine: AsyncEngine | None = None) -> None:
        self.settings = settings
        self.topology = Topology.from_settings(settings.broker)
        self._engine = engine or create_engine(settings.database)
        self._owns_engine = engine is None
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, *, connect_attempts: int | None = None) -> None:
        """Connect to the broker, declare the topology and start listening for NOTIFY."""
        self._connection = await connect(
            self.settings.broker.url,
            attempts=connect_attempts,
            name=f"relaybox-publisher {self.topology.prefix}".strip(),
        )
        self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._exchanges = await self.topology.declare(self._channel)
        self._listener = asyncio.create_task(self._listen())

    async def close(self) -> None:
        """Stop listening and close connections (after the current batch finished)."""
        self._stop.set()
        if self._listener:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._connection:
            await self._connection.close()
        if self._owns_engine:
            await dispose(self._engine)

    def stop(self) -> None:
        """Ask `run` to return after its current batch."""
        self._stop.set()
        self._wake.set()

    async def ready(self) -> bool:
        """Database reachable and broker connection open."""
        if self._connection is None or self._connection.is_closed:
            return False
        try:
            async with self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except TRANSIENT:
            return False
        return True

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Relay until `stop()`: batch after batch, then sleep until NOTIFY or the poll interval."""
        backoff = 0.1
        metrics_due = 0.0
        last_rows = -math.inf  # when the latest batch with rows ended
        while not self._stop.is_set():
            self._wake.clear()
            try:
                count = await self.publish_batch()
                if count:
                    last_rows = time.monotonic()
                if time.monotonic() >= metrics_due:
                    await self.refresh_backlog_metrics()
                    metrics_due = time.monotonic() + self.settings.metrics_interval_s
                backoff = 0.1
            except TRANSIENT as exc:
                metrics.FAILURES.inc()
                log.warning("relay batch failed, will retry", extra={"error": repr(exc)})
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if count < self.settings.batch_size:
                await self._sleep(self.settings.poll_interval_s, wakeable=True)
                linger = self.settings.linger_s
                if linger and time.monotonic() - last_rows <= linger:
                    # A stream (rows again within `linger` of the last batch that had some):
                    # gather what arrives for a moment, so that each batch's round trips serve
                    # more rows. A row after a quiet spell goes at once.
                    await self._sleep(linger)

    async def drain(self) -> int:
        """Publish until no row is available; returns how many were published (tests, shutdown)."""
        total = 0
        while count := await self.publish_batch():
            total += count
        return total

    async def publish_batch(self) -> int:
        """Claim up to batch_size rows, publish them, delete the confirmed ones; rows claimed.

        Three round trips to the database: BEGIN, the claim, and the delete with the COMMIT in
        one simple query; and one write to the broker for the whole batch. A connection lost
        under the batch rolls it back (the rows stay, unlocked) and the batch runs once more on
        a fresh connection: what was published already goes out again, which at-least-once
        allows (the consumers' claim makes a second copy a no-op).
        """

        async def batch(conn: asyncpg.Connection, _repeated: bool) -> int:
            await conn.execute("BEGIN")
            try:
                rows = await conn.fetch(CLAIM, self.settings.batch_size)
                if not rows:
                    await conn.execute("COMMIT")
                    return 0
                outcomes = await self._publish(rows)
                failpoint("publisher.after_publish", self.settings.faults)
                await self._settle(conn, rows, outcomes)  # ... and COMMIT
            except BaseException:
                await _rollback(conn)
                raise
            return len(rows)

        count = await run_on_driver(self._engine, batch)
        if count:
            failpoint("publisher.after_commit", self.settings.faults)
        return count

    async def refresh_backlog_metrics(self) -> None:
        async with self._engine.connect() as conn:
            count, age = (await conn.execute(BACKLOG)).one()
        metrics.BACKLOG.set(count)
        metrics.OLDEST_AGE.set(float(age))

    # -- the batch's messages -----------------------------------------------------------------

    async def _publish(self, rows: list[asyncpg.Record]) -> list[Outcome]:
        """Publish the rows in order, as one write, and wait for the broker's verdict on each."""
        outcomes: list[Outcome | None] = [None] * len(rows)
        outgoing: list[Outgoing] = []
        sent: list[int] = []  # the index of each row in `outgoing`
        for index, row in enumerate(rows):
            message = self._message(row)
            if message is None:
                metrics.RETURNS.inc()
                outcomes[index] = Outcome(row["id"], f"unknown destination {row['destination']!r}")
            else:
                outgoing.append(message)
                sent.append(index)
        if outgoing:
            channel = await self._underlay()
            started = time.perf_counter()
            verdicts = await publish_confirmed(channel, outgoing, self.settings.publish_timeout_s)
            latency = time.perf_counter() - started
            now = datetime.now(UTC)
            for index, verdict in zip(sent, verdicts, strict=True):
                row = rows[index]
                outcomes[index] = self._outcome(row, verdict, latency, now)
        return [outcome for outcome in outcomes if outcome is not None]

    async def _underlay(self) -> aiormq.Channel:
        """The robust channel's current aiormq channel, once it is restored: a channel the
        broker closed (or a lost connection) is reopened and its topology declared again, and a
        publish in between would race the declarations (a message to an exchange not declared
        yet closes the channel again, and the restore fails with it). Waits at most the publish
        timeout (TimeoutError: the batch is tried again)."""
        assert self._channel is not None
        async with asyncio.timeout(self.settings.publish_timeout_s):
            await self._channel.ready()
        return cast(aiormq.Channel, await self._channel.get_underlay_channel())

    def _message(self, row: asyncpg.Record) -> Outgoing | None:
        """The row as a message, or None when its destination has no exchange."""
        destination = row["destination"]
        exchange = self.topology.exchange_for(destination)
        if exchange is None or exchange not in self._exchanges:
            return None
        # A chat event goes to the replicas its users are connected to, or to none: nobody
        # connected is not an error (a client that connects later resumes from PostgreSQL), and
        # it is not kept across a broker restart (the replicas' queues are not).
        live_event = destination == EVENTS
        properties = spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=NOT_PERSISTENT if live_event else PERSISTENT,
            headers=dict(row["headers"]),
            message_id=str(row["message_id"]),
            priority=0,
            timestamp=row["created_at"],
        )
        body = json.dumps(row["payload"], separators=(",", ":")).encode()
        return Outgoing(exchange, row["routing_key"], body, properties, not live_event)

    def _outcome(
        self, row: asyncpg.Record, verdict: Verdict, latency: float, now: datetime
    ) -> Outcome:
        if isinstance(verdict, PublishError):
            metrics.RETURNS.inc()
            return Outcome(row["id"], f"unroutable: no queue bound for {row['routing_key']!r}")
        if isinstance(verdict, DeliveryError):
            metrics.NACKS.inc()
            return Outcome(row["id"], "nacked by the broker")
        metrics.CONFIRMS.inc()
        metrics.PUBLISH_LATENCY.observe(latency)
        metrics.RELAY_LAG.observe((now - row["created_at"]).total_seconds())
        return Outcome(row["id"])

    async def _settle(
        self, conn: asyncpg.Connection, rows: list[asyncpg.Record], outcomes: list[Outcome]
    ) -> None:
        """Postpone the refused rows, delete the confirmed ones and commit."""
        attempts = {row["id"]: row["publish_attempts"] for row in rows}
        for outcome in outcomes:
            if outcome.error is None:
                continue
            delay = min(
                self.settings.retry_backoff_s * 2 ** attempts[outcome.row_id],
                self.settings.retry_backoff_max_s,
            )
            log.warning(
                "broker refused an outbox row, postponed",
                extra={"outbox_id": outcome.row_id, "error": outcome.error, "delay_s": delay},
            )
            await conn.execute(POSTPONE, outcome.row_id, outcome.error, float(delay))
        confirmed = [o.row_id for o in outcomes if o.error is None]
        # One round trip: the DELETE and the COMMIT in one simple query. The ids are the
        # table's own bigints (int() keeps the text a list of numbers).
        ids = ",".join(str(int(row_id)) for row_id in confirmed)
        delete = f"DELETE FROM outbox WHERE id = ANY('{{{ids}}}'::bigint[])"  # noqa: S608
        await conn.execute(f"{delete}; COMMIT")

    # -- waking ----------------------------------------------------------------------------

    async def _sleep(self, seconds: float, *, wakeable: bool = False) -> None:
        waiter = self._wake if wakeable else self._stop
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.wait(), timeout=seconds)

    async def _listen(self) -> None:
        """Keep a LISTEN connection open; reconnect with backoff when the database restarts."""
        dsn = asyncpg_dsn(self.settings.database.url)
        backoff = 0.1
        while not self._stop.is_set():
            try:
                conn = await asyncpg.connect(dsn, timeout=10)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("LISTEN connection failed", extra={"error": repr(exc)})
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            lost = asyncio.Event()
            try:
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(NOTIFY_CHANNEL, lambda *_args: self._wake.set())
                self._wake.set()  # catch up on anything written while we were not listening
                await lost.wait()
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
