"""The worker runtime: consume the work queues, run handlers, ack after the state is recorded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from opentelemetry import propagate, trace
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.messaging.broker import connect
from relaybox.common.messaging.topology import Topology, message_count
from relaybox.consumer import metrics
from relaybox.consumer.deadletters import DeadLetterOffice, death_of
from relaybox.consumer.errors import GiveBackError, PoisonMessageError
from relaybox.consumer.settings import ConsumerSettings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("relaybox.consumer")


class Handler(Protocol):
    """Handles the messages of one routing key; returns an outcome label."""

    route: str

    async def handle(self, payload: dict[str, Any], headers: dict[str, Any]) -> str: ...

    async def stop(self) -> None:
        """The worker takes no more messages (in-flight ones go on)."""
        ...


class Worker:
    """One consumer replica: prefetch-bounded, drains on stop, idempotent handlers."""

    def __init__(
        self,
        settings: ConsumerSettings,
        engine: AsyncEngine,
        topology: Topology,
        handlers: list[Handler],
        office: DeadLetterOffice | None = None,
    ) -> None:
        self.settings = settings
        self.office = office
        self.engine = engine
        self.topology = topology
        self.handlers = {h.route: h for h in handlers}
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queues: dict[str, AbstractQueue] = {}
        self._tags: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()

    async def start(self, *, connect_attempts: int | None = None) -> None:
        """Connect, declare the topology and start consuming every handler's queue."""
        self._connection = await connect(
            self.settings.broker.url,
            attempts=connect_attempts,
            name=f"relaybox-consumer {self.topology.prefix}".strip(),
        )
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self.settings.prefetch)
        await self.topology.declare(self._channel)
        for route in self.handlers:
            queue = await self._channel.get_queue(self.topology.queue(route))
            self._queues[route] = queue
            self._tags[route] = await queue.consume(self._on_message)
        if self.office is not None:  # drain every DLQ into the dead-letter office
            for route in self.handlers:
                dlq_name = self.topology.dead_letter_queue(route)
                dlq = await self._channel.get_queue(dlq_name)
                self._queues[dlq_name] = dlq
                self._tags[dlq_name] = await dlq.consume(self._on_dead_letter)
        log.info("consumer started", extra={"routes": sorted(self.handlers)})

    async def stop(self) -> None:
        """Stop taking new messages (in-flight ones go on)."""
        for route, tag in list(self._tags.items()):
            with contextlib.suppress(Exception):
                await self._queues[route].cancel(tag)
        self._tags.clear()
        self._stopped.set()
        for handler in self.handlers.values():
            try:
                await handler.stop()
            except Exception:
                log.exception("handler failed to stop cleanly", extra={"route": handler.route})

    async def drain(self, grace_s: float | None = None) -> None:
        """Wait for in-flight messages; past the grace period cancel them (they get redelivered)."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "in-flight messages abandoned at shutdown", extra={"count": len(pending)}
                )
                await asyncio.wait(pending)

    async def close(self) -> None:
        """Stop, drain, close the connection."""
        await self.stop()
        await self.drain()
        if self._connection:
            await self._connection.close()

    async def ready(self) -> bool:
        """Database reachable and broker connection open."""
        if self._connection is None or self._connection.is_closed:
            return False
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001 - readiness reports, it does not raise
            return False
        return True

    @property
    def stopping(self) -> bool:
        return self._stopped.is_set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def run_until_idle(
        self, *, idle_rounds: int = 3, interval_s: float = 0.05, limit_s: float = 60.0
    ) -> None:
        """Return once nothing is in flight and the work and retry queues stay empty.

        Lets tests and batch jobs stop the worker deterministically; raises TimeoutError if the
        queues are still busy after `limit_s`.
        """
        async with asyncio.timeout(limit_s):
            quiet = 0
            while quiet < idle_rounds:
                await asyncio.sleep(interval_s)
                quiet = quiet + 1 if not self._tasks and await self._queues_empty() else 0

    async def refresh_dlq_metrics(self) -> None:
        """Read every DLQ's depth, and the dead-letter office's open letters, into the gauges."""
        if not self._channel:
            return
        for route in self.handlers:
            name = self.topology.dead_letter_queue(route)
            metrics.DLQ_DEPTH.labels(name).set(await message_count(self._channel, name))
        if self.office is not None:
            await self.office.refresh_metrics(list(self.handlers))

    async def _queues_empty(self) -> bool:
        assert self._channel is not None
        names = [self.topology.queue(r) for r in self.handlers]
        names += [self.topology.retry_queue(d) for d in self.topology.retry_delays_ms]
        if self.office is not None:
            names += [self.topology.dead_letter_queue(r) for r in self.handlers]
        for name in names:
            if await message_count(self._channel, name):
                return False
        return True

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # One task per message (bounded by prefetch) so slow sends overlap.
        self._spawn(self._process(message))

    async def _on_dead_letter(self, message: AbstractIncomingMessage) -> None:
        self._spawn(self._file_dead_letter(message))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _file_dead_letter(self, message: AbstractIncomingMessage) -> None:
        """A DLQ message into the dead-letter office; acked once filed (else it stays queued)."""
        assert self.office is not None
        try:
            await self.office.file(death_of(message))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            raise
        except Exception:
            log.exception(
                "dead letter not filed; it stays in the DLQ", extra={"route": message.routing_key}
            )
            await asyncio.sleep(1.0)  # do not spin while the database is away
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        else:
            await message.ack()

    async def _reject_poison(self, message: AbstractIncomingMessage, error: str) -> None:
        """File an unprocessable message with its reason and ack it; if it cannot be filed,
        reject it to the DLQ (the drain files it later, with RabbitMQ's reason)."""
        if self.office is not None:
            try:
                await self.office.file(death_of(message, error))
            except Exception:
                log.exception("poison message not filed; rejected to the DLQ")
            else:
                await message.ack()
                return
        await message.reject(requeue=False)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        route = message.routing_key or ""
        headers: dict[str, Any] = dict(message.headers or {})
        metrics.IN_FLIGHT.inc()
        try:
            context = propagate.extract({k: str(v) for k, v in headers.items()})
            with tracer.start_as_current_span(
                f"consume {route}", context=context, kind=trace.SpanKind.CONSUMER
            ):
                outcome = await self._run_handler(route, message.body, headers)
            await message.ack()
        except GiveBackError as exc:
            log.info("message given back", extra={"route": route, "reason": str(exc)})
            outcome = "given_back"
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        except PoisonMessageError as exc:
            log.error("poison message dead-lettered", extra={"route": route, "error": str(exc)})
            outcome = "poison"
            await self._reject_poison(message, f"unprocessable: {exc}")
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            raise
        except Exception:
            log.exception("handler crashed; message requeued", extra={"route": route})
            outcome = "error"
            await asyncio.sleep(1.0)  # do not spin; x-delivery-limit dead-letters a real poison
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        finally:
            metrics.IN_FLIGHT.dec()
        metrics.OUTCOMES.labels(route, outcome).inc()

    async def _run_handler(self, route: str, body: bytes, headers: dict[str, Any]) -> str:
        handler = self.handlers.get(route)
        if handler is None:
            raise PoisonMessageError(f"no handler for routing key {route!r}")
        try:
            payload = json.loads(body)
        except ValueError:
            raise PoisonMessageError("body is not JSON") from None
        if not isinstance(payload, dict):
            raise PoisonMessageError("body is not a JSON object")
        return await handler.handle(payload, headers)
