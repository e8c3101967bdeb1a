"""The send flow every outbound handler shares: claim, call the provider, record, retry or fail."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from relaybox.common.db.errors import database_outage
from relaybox.common.db.session import connection, run_on_driver
from relaybox.common.faults import failpoint
from relaybox.common.messaging.topology import Topology
from relaybox.common.outbox import DEAD, enqueue, retry_destination
from relaybox.consumer import metrics
from relaybox.consumer.batching import Coalescer
from relaybox.consumer.deadletters import (
    ATTEMPTS_HEADER,
    LAST_ERROR_HEADER,
    MAX_ERROR,
    scrubbed,
)
from relaybox.consumer.delivery import DeliveryTable
from relaybox.consumer.errors import GiveBackError, PoisonMessageError, SendNotRecordedError
from relaybox.consumer.providers.base import PermanentError, RateLimitedError, RetryableError
from relaybox.consumer.ratelimit import LimiterClosedError, RateLimiter, Slot
from relaybox.consumer.settings import ConsumerSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
TRANSIENT_DB = (OSError, ConnectionError, OperationalError, DBAPIError, asyncpg.PostgresError)
LEASE_RENEW_AFTER_S = 1.0
"""A slot wait this much longer than the claim's lease planned for renews the lease."""
RECORD_RETRY_S = 5.0
CARRIED_HEADERS = ("traceparent", "tracestate", "x-correlation-id")


def carried_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """The headers a retried or dead-lettered copy keeps (trace context, correlation id)."""
    return {k: v for k, v in headers.items() if k in CARRIED_HEADERS}


def dead_headers(headers: dict[str, Any], error: str, attempts: int) -> dict[str, Any]:
    """The headers of a copy dead-lettered after `attempts`: what the dead-letter office files
    as its last error and attempts."""
    return {
        **carried_headers(headers),
        LAST_ERROR_HEADER: error[:MAX_ERROR],
        ATTEMPTS_HEADER: attempts,
    }


class DatabaseWork:
    """A handler's way to the database: transactions and single statements that ride out a
    database restart (`RELAYBOX_DB_RETRY_S`), and recording that outlasts any outage."""

    route: str

    def __init__(self, engine: AsyncEngine, settings: ConsumerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._db_retry = AsyncRetrying(
            retry=retry_if_exception_type(TRANSIENT_DB),
            stop=stop_after_delay(settings.db_retry_s),
            wait=wait_exponential(multiplier=0.1, max=5),
            reraise=True,
        )

    async def in_tx(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run `work` in one transaction, retrying through a database restart (db_retry_s)."""

        async def attempt() -> T:
            # Not pre-pinged: a lost connection fails this attempt and the retry runs on a
            # fresh one (what rides out a restart anyway).
            async with connection(self.engine, pre_ping=False) as conn, conn.begin():
                return await work(conn)

        return await self._db(attempt)

    async def in_statement(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `work`, a single statement, on a bare driver connection in autocommit (no BEGIN
        and COMMIT round trips, no SQLAlchemy statement handling), retrying through a database
        restart like `in_tx`. `work` must be safe to repeat after a lost connection."""
        return await self._db(lambda: run_on_driver(self.engine, lambda conn, _: work(conn)))

    async def _db(self, attempt: Callable[[], Awaitable[T]]) -> T:
        # Most calls take one attempt, without building a retry policy.
        try:
            return await attempt()
        except TRANSIENT_DB:
            pass
        async for retry in self._db_retry.copy():
            with retry:
                return await attempt()
        raise AssertionError("unreachable")  # pragma: no cover

    async def through_outages(self, record: Callable[[], Awaitable[object]], what: str) -> bool:
        """Run `record` (an accepted send's recording) until the database answers, however
        long it is away; False, logged, if it refuses the statement."""
        while True:
            try:
                await record()
            except Exception as exc:
                if not database_outage(exc):
                    log.exception("recording failed", extra={"route": self.route, "what": what})
                    return False
                log.warning(
                    "database unavailable; still recording an accepted send",
                    extra={"route": self.route, "what": what},
                )
                await asyncio.sleep(RECORD_RETRY_S)
            else:
                return True


class SendingHandler(DatabaseWork, ABC):
    """Handles one routing key whose messages carry the id of a row in `table`."""

    route: str
    table: DeliveryTable
    provider_name: str

    def __init__(
        self,
        engine: AsyncEngine,
        topology: Topology,
        settings: ConsumerSettings,
        limiter: RateLimiter | None = None,
    ) -> None:
        super().__init__(engine, settings)
        self.topology = topology
        self.limiter = limiter
        # Recording SENT is one statement unless the handler adds work to it (`after_sent`).
        self._sent_in_one_statement = type(self).after_sent is SendingHandler.after_sent
        # Claims, and SENT records, asked for while one such statement runs go together in the
        # next one (group commit, `batching`).
        self._claims: Coalescer[tuple[Any, float], dict[str, Any] | None] = Coalescer(
            lambda claims: self.in_statement(lambda c: self.table.claim_many(c, claims)),
            lambda claim: self.in_statement(lambda c: self.table.claim(c, *claim)),
            shared=database_outage,
        )
        self._sends: Coalescer[tuple[Any, str | None], bool] = Coalescer(
            lambda sends: self.in_statement(lambda c: self.table.mark_sent_many(c, sends)),
            lambda sent: self.in_statement(lambda c: self.table.mark_sent(c, *sent)),
            shared=database_outage,
        )

    @abstractmethod
    async def send(self, row: dict[str, Any], payload: dict[str, Any]) -> str | None:
        """Call the provider once for a claimed row (`payload`: its message's, for what travels
        only there); return the provider's id (None if it gave none). Returns normally exactly
        when the provider accepted the send."""

    async def prepare(self) -> None:  # an optional hook, empty by default
        """Whatever must happen before a send can start at once (authenticating, ...): done
        before a rate-limit slot is booked, so that it never delays the request past its slot."""

    async def stop(self) -> None:
        """The worker stops taking messages: book no more slots; give back the spare ones."""
        if self.limiter is not None:
            await self.limiter.close()

    def row_id(self, payload: dict[str, Any]) -> Any:
        """The row a message points at."""
        try:
            return payload["id"]
        except (KeyError, TypeError):
            raise PoisonMessageError("message has no 'id'") from None

    async def after_sent(  # an optional hook, empty by default
        self, conn: AsyncConnection, row_id: Any, provider_id: str | None
    ) -> None:
        """Extra work in the transaction that records SENT (none by default)."""

    async def handle(self, payload: dict[str, Any], headers: dict[str, Any]) -> str:
        """Process one delivery; returns the outcome label. Safe to call twice for one message."""
        row_id = self.row_id(payload)
        await self.prepare()
        # Book a global slot first and claim for the wait plus the lease, then sleep until the
        # slot: only the provider call sits between the slot and the request reaching it.
        slot = await self._reserve()
        planned_wait = slot.wait_s if slot is not None else 0.0
        try:
            row = await self._claims.submit((row_id, self.settings.lease_s + planned_wait))
        except BaseException:
            self._release(slot)
            raise
        if row is None:
            self._release(slot)
            return await self._not_claimed(row_id, payload, headers)
        if not await self._until_slot(row, slot, planned_wait):
            return "duplicate"  # the lease ran out while waiting and another consumer took over
        failpoint(f"{self.route}.after_claim", self.settings.faults)
        outcome = asyncio.ensure_future(self._send_and_record(row, payload, headers))
        try:
            return await asyncio.shield(outcome)
        except asyncio.CancelledError:
            # A stopping worker: a call under way is finished and its outcome recorded, never
            # abandoned (abandoned, it would be sent again once the lease ran out).
            await outcome
            raise

    async def _send_and_record(
        self, row: dict[str, Any], payload: dict[str, Any], headers: dict[str, Any]
    ) -> str:
        """Call the provider once and record what it answered."""
        row_id = row["id"]
        started = time.perf_counter()
        try:
            provider_id = await self.send(row, payload)
        except RetryableError as exc:
            self._observe(started, "retryable")
            if self.limiter is not None and exc.retry_after:
                await self.limiter.pause(exc.retry_after)  # every replica waits it out
            return await self._retry_or_fail(row, payload, headers, exc)
        except PermanentError as exc:
            self._observe(started, "permanent")
            error = str(exc)
            await self.in_statement(lambda c: self.table.mark_failed(c, row_id, error))
            metrics.ATTEMPTS.labels(self.route, "FAILED").observe(row["attempts"])
            return "failed"
        # The provider accepted: from here on nothing may give the message back (a redelivery
        # would send it again). Whatever goes wrong, the send is recorded.
        try:
            self._observe(started, "accepted")
            failpoint(f"{self.route}.after_send", self.settings.faults)
            await self._record_sent(row_id, provider_id)
        except Exception:
            log.exception(
                "recording an accepted send failed; recording SENT alone",
                extra={"route": self.route, "id": str(row_id)},
            )
            await self._record_sent_alone(row_id, provider_id)
        metrics.ATTEMPTS.labels(self.route, "SENT").observe(row["attempts"])
        return "sent"

    async def _reserve(self) -> Slot | None:
        """A rate-limit slot, or None without a limiter; a stopping limiter gives the message
        back untouched."""
        if self.limiter is None:
            return None
        try:
            return await self.limiter.reserve()
        except LimiterClosedError:
            raise GiveBackError("the consumer is stopping") from None

    def _release(self, slot: Slot | None) -> None:
        if slot is not None and self.limiter is not None:
            self.limiter.release(slot)

    async def _until_slot(self, row: dict[str, Any], slot: Slot | None, planned: float) -> bool:
        """Wait for the slot (a pause or a late wake-up can make it longer than planned; the
        lease is then renewed). False if the claim was lost meanwhile; interrupted (a stopping
        consumer), the claim is given back before the error goes on."""
        if slot is None or self.limiter is None:
            return True
        row_id, attempts = row["id"], row["attempts"]
        try:
            waited = await self.limiter.wait(slot)
            if waited > planned + LEASE_RENEW_AFTER_S:
                lease_s = self.settings.lease_s
                return bool(
                    await self.in_statement(
                        lambda c: self.table.renew(c, row_id, attempts, lease_s)
                    )
                )
        except asyncio.CancelledError:  # the drain's grace ran out: the worker requeues it
            await self.in_statement(lambda c: self.table.unclaim(c, row_id, attempts))
            raise
        except LimiterClosedError:
            await self.in_statement(lambda c: self.table.unclaim(c, row_id, attempts))
            raise GiveBackError("the consumer is stopping") from None
        return True

    async def _record_sent(self, row_id: Any, provider_id: str | None) -> None:
        """SENT with the provider's id, and the handler's `after_sent` work in the same
        transaction."""
        if self._sent_in_one_statement:
            await self._sends.submit((row_id, provider_id))
            return

        async def record(conn: AsyncConnection) -> None:
            if await self.table.mark_sent(conn, row_id, provider_id):
                await self.after_sent(conn, row_id, provider_id)

        await self.in_tx(record)

    async def _record_sent_alone(self, row_id: Any, provider_id: str | None) -> None:
        """SENT by itself, for when recording it with the rest failed: through any database
        outage (the lease keeps other consumers off the row meanwhile), and without the
        provider's id if even that is refused."""
        for kept_id in (provider_id, None):
            if await self._mark_sent_through_outages(row_id, kept_id):
                return
        raise SendNotRecordedError(f"{self.table.table} row {row_id} was sent but not recorded")

    async def _mark_sent_through_outages(self, row_id: Any, provider_id: str | None) -> bool:
        """SENT, tried until the database answers; False if it refuses the statement."""

        async def mark() -> bool:
            return await self.in_statement(lambda c: self.table.mark_sent(c, row_id, provider_id))

        return await self.through_outages(mark, f"the send of {self.table.table} row {row_id}")

    def _observe(self, started: float, result: str) -> None:
        metrics.SEND_LATENCY.labels(self.provider_name).observe(time.perf_counter() - started)
        metrics.PROVIDER_RESULTS.labels(self.provider_name, result).inc()

    async def _not_claimed(
        self, row_id: Any, payload: dict[str, Any], headers: dict[str, Any]
    ) -> str:
        peek = await self.in_tx(lambda c: self.table.peek(c, row_id))
        if peek is None:
            raise PoisonMessageError(f"no {self.table.table} row {row_id}")
        if peek.status != "SENDING":
            return "duplicate"  # already final (or PENDING again and re-enqueued by its owner)
        # Another consumer holds a live lease: look again once it has run out.
        delay = self.topology.retry_delay_for(1, retry_after_s=peek.lease_left_s)

        async def defer(conn: AsyncConnection) -> None:
            await enqueue(
                conn,
                routing_key=self.route,
                payload=payload,
                destination=retry_destination(delay),
                headers=carried_headers(headers),
            )

        await self.in_tx(defer)
        return "deferred"

    async def _retry_or_fail(
        self,
        row: dict[str, Any],
        payload: dict[str, Any],
        headers: dict[str, Any],
        exc: RetryableError,
    ) -> str:
        attempts: int = row["attempts"]
        error = str(exc)
        rate_limited = isinstance(exc, RateLimitedError)
        # 429s are shown among the attempts but do not use up the budget (flow control).
        counted = attempts - row["throttled"]
        if counted >= self.settings.max_attempts and not rate_limited:
            dead = scrubbed(payload)  # no secret enters the DLQ
            kept = dead_headers(headers, error, attempts)
            await self.in_tx(lambda c: self._dead_letter(c, row["id"], dead, kept, error))
            metrics.DEAD_LETTERED.labels(self.route).inc()
            metrics.ATTEMPTS.labels(self.route, "FAILED").observe(attempts)
            return "dead_lettered"
        delay = self.topology.retry_delay_for(max(counted, 1), retry_after_s=exc.retry_after)

        async def retry(conn: AsyncConnection) -> None:
            if await self.table.release_for_retry(
                conn, row["id"], attempts, error, throttled=rate_limited
            ):
                await enqueue(
                    conn,
                    routing_key=self.route,
                    payload=payload,
                    destination=retry_destination(delay),
                    headers=carried_headers(headers),
                )

        await self.in_tx(retry)
        metrics.RETRIES.labels(self.route, str(delay)).inc()
        log.info(
            "send failed, retry scheduled",
            extra={
                "route": self.route,
                "id": str(row["id"]),
                "attempt": attempts,
                "delay_ms": delay,
            },
        )
        return "retried"

    async def _dead_letter(
        self,
        conn: AsyncConnection,
        row_id: Any,
        payload: dict[str, Any],
        headers: dict[str, Any],
        error: str,
    ) -> None:
        if await self.table.mark_failed(conn, row_id, error):
            await enqueue(
                conn,
                routing_key=self.route,
                payload=payload,
                destination=DEAD,
                headers=headers,
            )
