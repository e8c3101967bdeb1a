"""Wire shapes of the Meta-like mock: requests, answers, config, stats and webhook events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

Channel = Literal["whatsapp", "instagram"]
CHANNELS: tuple[Channel, ...] = ("whatsapp", "instagram")
DeliveryStatus = Literal["sent", "delivered", "read"]
STATUS_ORDER: tuple[DeliveryStatus, ...] = ("sent", "delivered", "read")

Rate = Annotated[float, msgspec.Meta(ge=0, le=1, description="probability in [0, 1]; 0 = never")]
DelayMs = Annotated[int, msgspec.Meta(ge=0, le=60_000)]
Count = Annotated[int, msgspec.Meta(ge=0)]
FailStatus = Annotated[int, msgspec.Meta(ge=400, le=599, description="HTTP status of failNext")]
FailStatuses = Annotated[
    tuple[Annotated[int, msgspec.Meta(ge=400, le=599)], ...],
    msgspec.Meta(min_length=1, description="statuses a random failure picks from"),
]
HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://\S+$")]
NonEmpty = Annotated[str, msgspec.Meta(pattern=r"\S")]


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with millisecond precision and a `Z` suffix."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(value: str) -> datetime:
    """ISO 8601; a time without an offset is taken as UTC. Raises ValueError."""
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- POST /messages ---------------------------------------------------------------------------


class SendRequest(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """An outbound chat message; checked by the mock itself so a bad one gets a 400 like Meta's."""

    channel: str | None = None
    to: str | None = None
    text: str | None = None
    client_message_id: str | None = None


class SendAccepted(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The provider took the message."""

    success: Literal[True] = True
    provider_message_id: str
    timestamp: str


class SendError(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The provider refused the message; `retryable` tells whether a retry can succeed."""

    success: Literal[False] = False
    error: str
    retryable: bool


class StatusRecord(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One status event the mock emitted for a message (in posting order)."""

    status: DeliveryStatus
    event_id: str
    timestamp: str


class SentMessage(msgspec.Struct, kw_only=True, rename="camel"):
    """A message the mock accepted, with the status events emitted so far."""

    provider_message_id: str
    channel: Channel
    to: str
    text: str
    client_message_id: str | None
    timestamp: str
    statuses: list[StatusRecord] = msgspec.field(default_factory=list)


# --- /config and /stats -----------------------------------------------------------------------


class MetaConfig(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The behaviour switches; `seed` is the seed the RNG was last seeded with. A random
    failure (`failureRate`) answers one of `failureStatuses`."""

    failure_rate: Rate
    failure_statuses: FailStatuses
    duplicate_rate: Rate
    out_of_order_rate: Rate
    delay_max_ms: DelayMs
    rate_limit_per_second: Count
    seed: int
    dedupe: bool
    status_events: bool
    fail_next: Count
    fail_status: FailStatus
    webhook_url: HttpUrl


class ConfigPatch(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True
):
    """POST /config: the given fields replace the current ones; `seed` (null = random) reseeds."""

    failure_rate: Rate | UnsetType = UNSET
    failure_statuses: FailStatuses | UnsetType = UNSET
    duplicate_rate: Rate | UnsetType = UNSET
    out_of_order_rate: Rate | UnsetType = UNSET
    delay_max_ms: DelayMs | UnsetType = UNSET
    rate_limit_per_second: Count | UnsetType = UNSET
    seed: int | UnsetType | None = UNSET
    dedupe: bool | UnsetType = UNSET
    status_events: bool | UnsetType = UNSET
    fail_next: Count | UnsetType = UNSET
    fail_status: FailStatus | UnsetType = UNSET
    webhook_url: HttpUrl | UnsetType = UNSET


class MetaStats(msgspec.Struct, kw_only=True, rename="camel"):
    """Counters since start or the last reset: received = accepted + deduplicated + failed +
    rateLimited; webhooksSent/webhooksFailed count deliveries (after retries)."""

    received: int = 0
    accepted: int = 0
    deduplicated: int = 0
    failed: int = 0
    rate_limited: int = 0
    by_client_message_id: dict[str, int] = msgspec.field(default_factory=dict)
    webhooks_sent: int = 0
    webhooks_failed: int = 0
    webhook_retries: int = 0


# --- webhook events ---------------------------------------------------------------------------


class StatusEvent(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Posted to the gateway when a sent message changes status."""

    event_id: str
    type: Literal["status"] = "status"
    channel: Channel
    provider_message_id: str
    status: DeliveryStatus
    timestamp: str


class InboundEvent(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Posted to the gateway when a customer writes in."""

    event_id: str
    type: Literal["message"] = "message"
    channel: Channel
    from_: str = msgspec.field(name="from")
    text: str
    timestamp: str


# --- POST /simulate/inbound -------------------------------------------------------------------


class InboundRequest(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True
):
    """Make the mock post an inbound message event, optionally duplicated and/or out of order.

    `wait: true` answers only after every webhook POST (re-posts included) finished."""

    channel: Channel
    from_: NonEmpty = msgspec.field(name="from")
    text: NonEmpty
    event_id: NonEmpty | None = None
    timestamp: str | None = None
    duplicate: bool = False
    out_of_order: bool = False
    webhook_url: HttpUrl | None = None
    wait: bool = False

    def __post_init__(self) -> None:
        if self.timestamp is not None:
            try:
                parse_timestamp(self.timestamp)
            except ValueError:
                raise ValueError("`timestamp` must be an ISO 8601 date-time") from None


class Simulation(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What the simulation did: `duplicates` re-posts of the event and the id of the later
    event posted first when `outOfOrder`."""

    duplicate: bool
    out_of_order: bool
    duplicates: int
    later_event_id: str | None


class InboundAccepted(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The simulated inbound event; with `wait`, `success` says every webhook POST got a 2xx."""

    success: bool
    event_id: str
    timestamp: str
    simulation: Simulation
