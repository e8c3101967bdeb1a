"""Wire shapes of the push gateway mock: the contract's send, answers and receipts, and the
/_mock config (latency distributions, devices), stats and records."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
MAX_PAYLOAD_BYTES = 4096  # `data` + `notification`, encoded: FCM's message payload limit
MAX_LATENCY_MS = 60_000  # every latency draw is clamped to [0, MAX_LATENCY_MS]

FailStatus = Literal[400, 401, 403, 404, 429, 500, 503]
FAIL_STATUSES: tuple[FailStatus, ...] = (400, 401, 403, 404, 429, 500, 503)
Count = Annotated[int, msgspec.Meta(ge=0)]
Ms = Annotated[float, msgspec.Meta(ge=0, le=MAX_LATENCY_MS)]
Rate = Annotated[float, msgspec.Meta(ge=0, le=1, description="probability in [0, 1]; 0 = never")]
RetryAfterS = Annotated[int, msgspec.Meta(ge=1, le=3600)]
FailStatuses = Annotated[
    tuple[FailStatus, ...],
    msgspec.Meta(min_length=1, description="statuses a random failure picks from"),
]
HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://\S+$")]
Epoch = Annotated[float, msgspec.Meta(ge=0, description="epoch seconds")]

# --- POST /push/v1/messages:send ----------------------------------------------------------------


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """What a device shows; the mock only echoes and measures it."""

    title: str | None = None
    body: str | None = None


class PushMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One push to one device; every `data` value is a string (as in FCM). Other FCM fields
    (android, apns, ...) are ignored."""

    token: str
    data: dict[str, str] = msgspec.field(default_factory=dict)
    notification: Notification | None = None


class SendRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a send."""

    message: PushMessage


class SendAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """The gateway took the push: `projects/<project>/messages/<id>`."""

    name: str


class FcmErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    """FCM's own error code beside the Google status."""

    type: str = msgspec.field(name="@type", default=FCM_ERROR_TYPE)
    error_code: str = msgspec.field(name="errorCode")


class FcmError(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A Google API error: HTTP code, text, canonical status and (but for 401) FCM's code."""

    code: int
    message: str
    status: str
    details: tuple[FcmErrorDetail, ...] = ()


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every refusal of a send."""

    error: FcmError


# --- delivery receipts (POST <receiptUrl>) -------------------------------------------------------


class Receipt(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A device got a push: `id` is unique per delivery (the same on every retry)."""

    id: str
    name: str
    token: str
    data: dict[str, str]
    delivered_at: str


class ReceiptBatch(msgspec.Struct, frozen=True, kw_only=True):
    """The body of one receipt POST."""

    receipts: tuple[Receipt, ...]


# --- latency distributions ---------------------------------------------------------------------


class Fixed(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", tag="fixed", tag_field="kind"
):
    """Always `ms`."""

    ms: Ms = 0


class Uniform(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", tag="uniform", tag_field="kind"
):
    """Any value in [`minMs`, `maxMs`], equally likely."""

    min_ms: Ms
    max_ms: Ms

    def __post_init__(self) -> None:
        if self.min_ms > self.max_ms:
            raise ValueError("`minMs` must not be above `maxMs`")


class Exponential(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", tag="exponential", tag_field="kind"
):
    """Memoryless waits averaging `meanMs` (clamped to 60 s)."""

    mean_ms: Ms


class LogNormal(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", tag="lognormal", tag_field="kind"
):
    """A long tail: half the draws below `medianMs`, spread `sigma` (of the log); clamped to
    60 s."""

    median_ms: Annotated[float, msgspec.Meta(gt=0, le=MAX_LATENCY_MS)]
    sigma: Annotated[float, msgspec.Meta(ge=0, le=5)]


Latency = Fixed | Uniform | Exponential | LogNormal


# --- /_mock/config -----------------------------------------------------------------------------


class OfflineWindow(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True
):
    """The device is unreachable from `start` until `end` (epoch seconds); a missing `start` is
    the past, a missing `end` lasts until the config changes. Pushes accepted meanwhile are
    delivered when the window ends."""

    start: Epoch | None = None
    end: Epoch | None = None

    def __post_init__(self) -> None:
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError("an offline window must not end before it starts")


class DeviceOverride(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True
):
    """One device token's own network: offline windows, and what replaces the global switches
    (null: the global one)."""

    offline: tuple[OfflineWindow, ...] = ()
    loss: Rate | None = None
    unregistered: bool = False
    receipt_latency: Latency | None = None


class PushConfig(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The behaviour switches; `seed` is the seed the random streams were last seeded with.
    After the `failNext` calls, a random `failureRate` share answer one of `failureStatuses`."""

    seed: int
    answer_latency: Latency
    receipt_latency: Latency
    loss: Rate
    fail_next: Count
    fail_status: FailStatus
    failure_rate: Rate
    failure_statuses: FailStatuses
    retry_after_s: RetryAfterS
    rate_limit_per_second: Count
    unregistered_tokens: tuple[str, ...]
    devices: dict[str, DeviceOverride]
    receipt_url: HttpUrl


class PushConfigPatch(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True
):
    """POST /push/_mock/config: the given fields replace the current ones (`devices` as a whole);
    `seed` (null = random) reseeds every random stream."""

    seed: int | UnsetType | None = UNSET
    answer_latency: Latency | UnsetType = UNSET
    receipt_latency: Latency | UnsetType = UNSET
    loss: Rate | UnsetType = UNSET
    fail_next: Count | UnsetType = UNSET
    fail_status: FailStatus | UnsetType = UNSET
    failure_rate: Rate | UnsetType = UNSET
    failure_statuses: FailStatuses | UnsetType = UNSET
    retry_after_s: RetryAfterS | UnsetType = UNSET
    rate_limit_per_second: Count | UnsetType = UNSET
    unregistered_tokens: tuple[str, ...] | UnsetType = UNSET
    devices: dict[str, DeviceOverride] | UnsetType = UNSET
    receipt_url: HttpUrl | UnsetType = UNSET


# --- /_mock/stats and /_mock/messages ------------------------------------------------------------


class PushStats(msgspec.Struct, kw_only=True, rename="camel"):
    """Counters since start or the last reset: received = accepted + sum(rejected) (`rejected`
    keyed by status code as a string); `rateLimited`, `simulatedFailures` and `unregistered` say
    why; of the accepted, `lost` never get a receipt, `heldOffline` waited for a window's end;
    receipts are counted after their retries."""

    received: int = 0
    accepted: int = 0
    rejected: dict[str, int] = msgspec.field(default_factory=dict)
    rate_limited: int = 0
    simulated_failures: int = 0
    unregistered: int = 0
    lost: int = 0
    held_offline: int = 0
    receipts_sent: int = 0
    receipts_failed: int = 0
    receipt_retries: int = 0


ReceiptState = Literal["none", "lost", "pending", "offline", "sent", "failed", "cancelled"]


class PushRecord(msgspec.Struct, kw_only=True, rename="camel"):
    """One push call and what became of it. `receipt`: none (refused), lost, pending (waiting
    its latency), offline (held by a window), sent, failed (gave up) or cancelled (shutdown)."""

    received_at: float
    status: int
    outcome: str
    token: str | None
    data: dict[str, str]
    idempotency_key: str | None
    name: str | None = None
    answer_delay_ms: float = 0
    receipt_delay_ms: float | None = None
    receipt: ReceiptState = "none"
    receipt_id: str | None = None
    delivered_at: float | None = None
    receipt_attempts: int = 0


class PushRecordList(msgspec.Struct, frozen=True, kw_only=True):
    """Push calls in arrival order and how many matched."""

    data: list[PushRecord]
    total: int
