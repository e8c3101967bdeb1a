"""The declared topology: retry tiers that survive a broker restart, declarations that repeat."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest
from aio_pika.exceptions import ChannelPreconditionFailed

from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings


async def test_retry_tiers_are_quorum_queues_that_dead_letter_at_least_once(
    topology: Topology, broker_settings: BrokerSettings
) -> None:
    """A redeclaration with other arguments is refused: so the tier has exactly these. (What
    a classic tier loses across a restart: `python -m tests.chaos.dead_letter_probe`.)"""
    delay = topology.retry_delays_ms[0]
    connection = await aio_pika.connect(broker_settings.url)
    async with connection:
        channel = await connection.channel()
        await topology.declare(channel)  # again: declaring is idempotent
        arguments = topology.retry_arguments(delay)
        assert arguments["x-queue-type"] == "quorum"
        assert arguments["x-dead-letter-strategy"] == "at-least-once"
        await channel.declare_queue(topology.retry_queue(delay), durable=True, arguments=arguments)
        classic: dict[str, Any] = {
            "x-message-ttl": delay,
            "x-dead-letter-exchange": topology.exchange,
        }
        with pytest.raises(ChannelPreconditionFailed):
            await channel.declare_queue(
                topology.retry_queue(delay), durable=True, arguments=classic
            )
