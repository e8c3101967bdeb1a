"""The broker in tests and benchmarks: queues read directly for assertions, a run's topology
deleted."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import aio_pika

from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings


async def drain_queue(url: str, queue_name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take every ready message off a queue (acked)."""
    connection = await aio_pika.connect(url)
    taken: list[aio_pika.abc.AbstractIncomingMessage] = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name)
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            taken.append(message)
    return taken


async def queue_depth(url: str, queue_name: str) -> int:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        return queue.declaration_result.message_count or 0


async def publish_raw(
    url: str,
    exchange: str,
    routing_key: str,
    body: bytes | dict[str, Any],
    *,
    message_id: str | None = None,
) -> None:
    """Publish a message as a foreign producer would (bypassing the outbox, for poison tests)."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        target = await channel.get_exchange(exchange)
        message = aio_pika.Message(raw, message_id=message_id)
        await target.publish(message, routing_key=routing_key)


async def delete_topology(settings: BrokerSettings) -> None:
    """Remove every exchange and queue of a run's topology prefix (best effort)."""
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(settings.url, timeout=10)
        async with connection:
            await Topology.from_settings(settings).delete(await connection.channel())
