"""The RabbitMQ topology: work queues, retry tiers, dead-letter queues; declared idempotently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

from relaybox.common.outbox import DEAD, EVENTS, WORK, retry_destination
from relaybox.common.settings import BrokerSettings

ATTEMPT_HEADER = "x-attempt"
EMAIL_SEND = "email.send"
META_SEND = "meta.send"
MAILING_PARSE = "mailing.parse"
CHAT_DELIVER = "chat.deliver"  # push a batch of a chat message's copies to devices
ROUTES: tuple[str, ...] = (EMAIL_SEND, META_SEND, MAILING_PARSE, CHAT_DELIVER)


async def message_count(channel: AbstractChannel, queue: str) -> int:
    """Ready messages in a queue, read fresh from the broker.

    (A robust channel answers a passive `declare_queue` from its cache, with a stale count.)
    """
    underlay = await channel.get_underlay_channel()
    result = await underlay.queue_declare(queue=queue, passive=True)
    return result.message_count or 0


@dataclass(frozen=True)
class Topology:
    """Names and declarations derived from the broker settings."""

    prefix: str = ""
    retry_delays_ms: tuple[int, ...] = (5_000, 30_000, 120_000, 600_000)
    delivery_limit: int = 5
    routes: tuple[str, ...] = ROUTES

    @classmethod
    def from_settings(cls, settings: BrokerSettings, routes: tuple[str, ...] = ROUTES) -> Topology:
        return cls(
            prefix=settings.topology_prefix,
            retry_delays_ms=tuple(settings.retry_delays_ms),
            delivery_limit=settings.delivery_limit,
            routes=routes,
        )

    @property
    def exchange(self) -> str:
        return f"{self.prefix}relaybox"

    @property
    def events_exchange(self) -> str:
        """Chat events for the realtime replicas (topic; routed by the BCC header's user keys,
        each replica binding the keys of the users connected to it)."""
        return f"{self.prefix}relaybox.chat.events"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}relaybox.dlx"

    def queue(self, routing_key: str) -> str:
        return f"{self.prefix}{routing_key}"

    def dead_letter_queue(self, routing_key: str) -> str:
        return f"{self.prefix}{routing_key}.dlq"

    def retry_exchange(self, delay_ms: int) -> str:
        return f"{self.prefix}relaybox.retries.{delay_ms}ms"

    def retry_queue(self, delay_ms: int) -> str:
        return self.retry_exchange(delay_ms)

    def retry_arguments(self, delay_ms: int) -> dict[str, Any]:
        """A retry tier: a quorum queue whose messages expire after the delay and are
        dead-lettered back to the work exchange **at least once**. (A classic queue dead-letters
        at most once: a broker restart drops the messages that expire across it, as
        `python -m tests.chaos.dead_letter_probe` shows; at-least-once needs `reject-publish`.)
        """
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": delay_ms,
            "x-dead-letter-exchange": self.exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def exchange_for(self, destination: str) -> str | None:
        """The exchange an outbox destination publishes to, or None if unknown."""
        if destination == WORK:
            return self.exchange
        if destination == DEAD:
            return self.dead_letter_exchange
        if destination == EVENTS:
            return self.events_exchange
        for delay in self.retry_delays_ms:
            if destination == retry_destination(delay):
                return self.retry_exchange(delay)
        return None

    def retry_delay_for(self, retry_number: int, retry_after_s: float | None = None) -> int:
        """The tier for the n-th retry (1-based): the n-th delay, or the first ≥ Retry-After."""
        index = min(max(retry_number, 1), len(self.retry_delays_ms)) - 1
        delay = self.retry_delays_ms[index]
        if retry_after_s is not None:
            wanted = retry_after_s * 1000
            longer = [d for d in self.retry_delays_ms if d >= wanted]
            delay = max(delay, min(longer) if longer else self.retry_delays_ms[-1])
        return delay

    def all_queues(self) -> list[str]:
        queues = [self.queue(r) for r in self.routes] + [
            self.dead_letter_queue(r) for r in self.routes
        ]
        return queues + [self.retry_queue(d) for d in self.retry_delays_ms]

    def all_exchanges(self) -> list[str]:
        return [self.exchange, self.dead_letter_exchange, self.events_exchange] + [
            self.retry_exchange(d) for d in self.retry_delays_ms
        ]

    async def declare(self, channel: AbstractChannel) -> dict[str, AbstractExchange]:
        """Declare every exchange, queue and binding (safe to repeat, e.g. on reconnect)."""
        main = await channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        dlx = await channel.declare_exchange(
            self.dead_letter_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        events = await channel.declare_exchange(
            self.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        exchanges: dict[str, AbstractExchange] = {
            main.name: main,
            dlx.name: dlx,
            events.name: events,
        }
        for route in self.routes:
            work = await channel.declare_queue(
                self.queue(route),
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-delivery-limit": self.delivery_limit,
                    "x-dead-letter-exchange": self.dead_letter_exchange,
                },
            )
            await work.bind(main, routing_key=route)
            dead = await channel.declare_queue(
                self.dead_letter_queue(route),
                durable=True,
                arguments={"x-queue-type": "quorum"},
            )
            await dead.bind(dlx, routing_key=route)
        for delay in self.retry_delays_ms:
            tier = await channel.declare_exchange(
                self.retry_exchange(delay), aio_pika.ExchangeType.FANOUT, durable=True
            )
            exchanges[tier.name] = tier
            queue = await channel.declare_queue(
                self.retry_queue(delay), durable=True, arguments=self.retry_arguments(delay)
            )
            await queue.bind(tier)
        return exchanges

    async def delete(self, channel: AbstractChannel) -> None:
        """Remove everything `declare` made (test clean-up, tenant removal)."""
        for name in self.all_queues():
            await channel.queue_delete(name)
        for name in self.all_exchanges():
            await channel.exchange_delete(name)
