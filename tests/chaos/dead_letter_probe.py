"""Probe what a RabbitMQ stop_app/start_app does to messages waiting in a retry tier.

`python -m tests.chaos.dead_letter_probe [--quorum]` publishes persistent, confirmed messages to a
TTL queue that dead-letters to a quorum queue (relaybox's retry tiers), stops and starts RabbitMQ,
and counts what reached the quorum queue. Classic TTL queues dead-letter at most once: the
messages that expire across the restart are dropped. `--quorum` makes the TTL queue a quorum
queue with at-least-once dead-lettering instead. It restarts the broker: never beside the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from typing import Any

import aio_pika

from tests.support.servers import DEFAULT_AMQP

PREFIX = "chaos-probe."
MESSAGES = 200
TTL_MS = 3000
AT_LEAST_ONCE = {
    "x-queue-type": "quorum",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


async def publish(url: str, tier_arguments: dict[str, Any]) -> None:
    """Declare work exchange -> quorum target, retry exchange -> TTL tier; fill the tier."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        work = await channel.declare_exchange(PREFIX + "work", "topic", durable=True)
        target = await channel.declare_queue(
            PREFIX + "target", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await target.bind(work, "route")
        retry = await channel.declare_exchange(PREFIX + "retry", "fanout", durable=True)
        tier = await channel.declare_queue(
            PREFIX + "tier",
            durable=True,
            arguments={
                "x-message-ttl": TTL_MS,
                "x-dead-letter-exchange": PREFIX + "work",
                **tier_arguments,
            },
        )
        await tier.bind(retry)
        for index in range(MESSAGES):
            body = aio_pika.Message(str(index).encode(), delivery_mode=2)
            await retry.publish(body, routing_key="route")  # each one confirmed


async def counts(url: str) -> tuple[int, int]:
    """Messages in (target, tier)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        target = await channel.declare_queue(PREFIX + "target", passive=True)
        tier = await channel.declare_queue(PREFIX + "tier", passive=True)
        return (
            target.declaration_result.message_count or 0,
            tier.declaration_result.message_count or 0,
        )


async def clean(url: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for queue in ("target", "tier"):
            await channel.queue_delete(PREFIX + queue)
        for exchange in ("work", "retry"):
            await channel.exchange_delete(PREFIX + exchange)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.dead_letter_probe")
    parser.add_argument("--quorum", action="store_true", help="at-least-once quorum TTL tier")
    parser.add_argument("--url", default=DEFAULT_AMQP)
    args = parser.parse_args(argv)
    asyncio.run(publish(args.url, AT_LEAST_ONCE if args.quorum else {}))
    print(f"{MESSAGES} messages confirmed into the tier (TTL {TTL_MS} ms); restarting RabbitMQ")
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
    try:
        time.sleep(5)
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
    time.sleep(TTL_MS / 1000 + 5)
    arrived, waiting = asyncio.run(counts(args.url))
    asyncio.run(clean(args.url))
    print(
        f"reached the quorum queue: {arrived}; still in the tier: {waiting}; lost: "
        f"{MESSAGES - arrived - waiting}"
    )
    return 0 if arrived + waiting == MESSAGES else 1


if __name__ == "__main__":
    sys.exit(main())
