"""Plans of webhook deliveries: which events, in which order, after which delays, how often.

Every random draw happens here, synchronously while a request is handled, so a seeded RNG
gives the same plan for the same sequence of requests whatever the event loop does later.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec

from relaybox.mock_meta.meta.models import (
    STATUS_ORDER,
    DeliveryStatus,
    InboundEvent,
    InboundRequest,
    MetaConfig,
    SentMessage,
    StatusEvent,
    format_timestamp,
    parse_timestamp,
)
from relaybox.mock_meta.meta.state import new_id

EventType = Literal["status", "message"]
LATER_PREFIX = "(later) "
LATER_BY = timedelta(seconds=1)
SECOND_DUPLICATE_CHANCE = 0.5  # a duplicated event is re-posted twice this often


@dataclass(frozen=True, slots=True)
class Delivery:
    """Wait `delay_s`, post `body`, then re-post the same bytes after each of `repost_delays_s`."""

    type: EventType
    event_id: str
    body: bytes
    timestamp: str
    delay_s: float = 0.0
    repost_delays_s: tuple[float, ...] = ()
    status: DeliveryStatus | None = None


@dataclass(frozen=True, slots=True)
class InboundPlan:
    """The deliveries of one simulated inbound event, in posting order."""

    event: InboundEvent
    deliveries: tuple[Delivery, ...]
    later_event_id: str | None

    @property
    def duplicates(self) -> int:
        """How many times the real event is re-posted."""
        return sum(len(delivery.repost_delays_s) for delivery in self.deliveries)


def plan_status_events(
    message: SentMessage, config: MetaConfig, rng: random.Random, sent_at: datetime
) -> tuple[Delivery, ...]:
    """sent, delivered, read with increasing timestamps; duplicated and swapped by the rates."""
    deliveries: list[Delivery] = []
    offset_ms = 0
    for index, status in enumerate(STATUS_ORDER):
        delay_ms = _delay_ms(rng, config)
        offset_ms += delay_ms
        moment = sent_at + timedelta(milliseconds=offset_ms + index)  # strictly increasing
        event = StatusEvent(
            event_id=new_id("evt"),
            channel=message.channel,
            provider_message_id=message.provider_message_id,
            status=status,
            timestamp=format_timestamp(moment),
        )
        deliveries.append(
            Delivery(
                type="status",
                event_id=event.event_id,
                body=msgspec.json.encode(event),
                timestamp=event.timestamp,
                delay_s=delay_ms / 1000,
                repost_delays_s=_reposts(rng, config, config.duplicate_rate),
                status=status,
            )
        )
    return tuple(_swap_some(deliveries, rng, config.out_of_order_rate))


def plan_inbound(request: InboundRequest, config: MetaConfig, rng: random.Random) -> InboundPlan:
    """The inbound event; `outOfOrder` posts a later, different event first."""
    moment = parse_timestamp(request.timestamp) if request.timestamp else datetime.now(UTC)
    event = InboundEvent(
        event_id=request.event_id or new_id("evt"),
        channel=request.channel,
        from_=request.from_,
        text=request.text,
        timestamp=request.timestamp or format_timestamp(moment),
    )
    deliveries: list[Delivery] = []
    later_event_id = None
    if request.out_of_order:
        later = msgspec.structs.replace(
            event,
            event_id=new_id("evt"),
            text=LATER_PREFIX + event.text,
            timestamp=format_timestamp(moment + LATER_BY),
        )
        later_event_id = later.event_id
        deliveries.append(_inbound_delivery(later))
    reposts = _reposts(rng, config, 1.0) if request.duplicate else ()
    deliveries.append(_inbound_delivery(event, reposts))
    return InboundPlan(event=event, deliveries=tuple(deliveries), later_event_id=later_event_id)


def _inbound_delivery(event: InboundEvent, reposts: tuple[float, ...] = ()) -> Delivery:
    return Delivery(
        type="message",
        event_id=event.event_id,
        body=msgspec.json.encode(event),
        timestamp=event.timestamp,
        repost_delays_s=reposts,
    )


def _delay_ms(rng: random.Random, config: MetaConfig) -> int:
    return rng.randint(0, config.delay_max_ms) if config.delay_max_ms > 0 else 0


def _reposts(rng: random.Random, config: MetaConfig, rate: float) -> tuple[float, ...]:
    """Delays (seconds after the first post) of re-posts: none, one, or sometimes two."""
    if rate <= 0 or rng.random() >= rate:
        return ()
    count = 2 if rng.random() < SECOND_DUPLICATE_CHANCE else 1
    return tuple(_delay_ms(rng, config) / 1000 for _ in range(count))


def _swap_some(deliveries: list[Delivery], rng: random.Random, rate: float) -> list[Delivery]:
    """Post a later status before the earlier one: each adjacent pair swaps with `rate`."""
    if rate <= 0:
        return deliveries
    index = 0
    while index < len(deliveries) - 1:
        if rng.random() < rate:
            deliveries[index], deliveries[index + 1] = deliveries[index + 1], deliveries[index]
            index += 2
        else:
            index += 1
    return deliveries
