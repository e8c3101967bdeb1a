"""A batch of messages published beneath aio-pika: one write to the socket, then the broker's
verdict on each message (its publisher confirm, its return, or its nack).

aio-pika's `Exchange.publish` does, per message: a `Message` and its properties, a countdown,
the channel lock, a frame queued for the connection's writer and a wait until it was written,
then the wait for the confirm. That is ~180 µs of CPU per message (bench.relay's bare loop), and
one write to the socket each. The relay knows a whole batch at once: its messages take the
channel lock once and their delivery tags in a row, their frames go out as one write, and the
batch then waits for all the confirms together.

Everything after the write is aiormq's own handling, as for its `basic_publish`: the broker's
acks (single or `multiple`) resolve the confirmations registered here, a return (`mandatory`,
unroutable) is matched to its message by message id and fails it with `PublishError`, a nack
with `DeliveryError`, and a lost channel or connection rejects every confirmation still
pending. The channel is the current underlay of aio-pika's robust channel: after a reconnect,
the next batch takes the new one (the topology was declared on it again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import aiormq
from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError, DeliveryError, PublishError
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

Confirmation = asyncio.Future[object]
Verdict = PublishError | DeliveryError | None
"""What the broker said of one message: None (confirmed), returned, or nacked."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message of a batch. `properties.message_id` must be set: a return names its message
    by it."""

    exchange: str
    routing_key: str
    body: bytes
    properties: spec.Basic.Properties
    mandatory: bool


async def publish_confirmed(
    channel: aiormq.Channel, messages: Sequence[Outgoing], timeout: float
) -> list[Verdict]:
    """Publish `messages` in order with one write and return the broker's verdict on each.

    Raises `TimeoutError` when a verdict has not come within `timeout` seconds, and the
    channel's or connection's error when it is lost before every verdict came: the caller
    then knows nothing of the messages still pending (they may or may not have been taken).
    """
    if not channel.publisher_confirms:
        raise ValueError("the channel was not opened with publisher confirms")
    if not messages:
        return []
    async with asyncio.timeout(timeout):
        confirmations = await _write(channel, messages)
        await asyncio.wait(confirmations)
    return [_verdict(confirmation) for confirmation in confirmations]


async def _write(channel: aiormq.Channel, messages: Sequence[Outgoing]) -> list[Confirmation]:
    """Register a confirmation per message and queue the batch's frames as one write."""
    if not all(message.properties.message_id for message in messages):
        raise ValueError("a message without a message id cannot be matched to a return")
    frames: list[spec.Basic.Publish | ContentHeader | ContentBody] = []
    confirmations: list[Confirmation] = []
    async with channel.lock:
        first_tag = channel.delivery_tag + 1
        written = False
        try:
            for tag, message in enumerate(messages, start=first_tag):
                message_id = str(message.properties.message_id)
                confirmation = channel.create_future()
                channel.confirmations[tag] = confirmation
                channel.message_id_delivery_tag[message_id] = tag
                confirmation.add_done_callback(partial(_forget, channel, message_id, tag))
                confirmations.append(confirmation)
                frames.append(
                    spec.Basic.Publish(
                        exchange=message.exchange,
                        routing_key=message.routing_key,
                        mandatory=message.mandatory,
                    )
                )
                frames.append(
                    ContentHeader(properties=message.properties, body_size=len(message.body))
                )
                frames.extend(_body_frames(channel, message.body))
            channel.delivery_tag = first_tag + len(messages) - 1
            await channel.write_queue.put(
                ChannelFrame.marshall(channel_number=channel.number, frames=frames)
            )
            written = True
        finally:
            if not written:  # the broker never saw them: the tags are free again
                channel.delivery_tag = first_tag - 1
                for tag, confirmation in enumerate(confirmations, start=first_tag):
                    channel.confirmations.pop(tag, None)
                    confirmation.cancel()
    return confirmations


def _body_frames(channel: aiormq.Channel, body: bytes) -> list[ContentBody]:
    """The body in frames of at most the size the connection negotiated."""
    size = channel.max_content_size
    return [ContentBody(body[i : i + size]) for i in range(0, len(body), size)]


def _forget(channel: aiormq.Channel, message_id: str, tag: int, _: Confirmation) -> None:
    """Once a message's verdict is in, its id no longer names it (for returns)."""
    if channel.message_id_delivery_tag.get(message_id) == tag:
        del channel.message_id_delivery_tag[message_id]


def _verdict(confirmation: Confirmation) -> Verdict:
    if confirmation.cancelled():  # the channel closed without an error of its own
        raise ChannelInvalidStateError("the channel closed before the broker confirmed")
    error = confirmation.exception()
    if error is None:
        return None
    if isinstance(error, PublishError | DeliveryError):
        return error
    raise error
