"""The Meta-like mock's in-memory state: config, seeded RNG, sent messages, stats, rate limit."""

from __future__ import annotations

import random
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from relaybox.mock_meta.control import SlidingLog, merged, take_failure
from relaybox.mock_meta.ledger import CallLedger
from relaybox.mock_meta.meta.models import (
    CHANNELS,
    Channel,
    ConfigPatch,
    MetaConfig,
    MetaStats,
    SendAccepted,
    SendError,
    SendRequest,
    SentMessage,
    format_timestamp,
)
from relaybox.mock_meta.settings import MetaMockSettings

TRANSIENT_STATUSES = (429, 500, 502, 503, 504)
_REASONS = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    429: "too many requests",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}
_WINDOW_S = 1.0
_CHANNELS: dict[str, Channel] = {channel: channel for channel in CHANNELS}

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """The answer to one POST /messages; `message` is set only for a new accepted send."""

    status_code: int
    body: SendAccepted | SendError
    retry_after_s: int | None = None
    message: SentMessage | None = None
    outcome: str = "accepted"


def is_retryable(status_code: int) -> bool:
    """Whether a client should retry after this status (429 and 5xx)."""
    return status_code == 429 or status_code >= 500


def new_id(prefix: str) -> str:
    """`msg_<uuid>` / `evt_<uuid>`."""
    return f"{prefix}_{uuid.uuid4()}"


class MetaState:
    """Everything the provider remembers; synchronous, so one request's decision is atomic."""

    def __init__(self, settings: MetaMockSettings, clock: Clock = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._rng = random.Random()
        seed = settings.seed if settings.seed is not None else secrets.randbits(32)
        self._rng.seed(seed)
        self._config = MetaConfig(
            failure_rate=settings.failure_rate,
            failure_statuses=TRANSIENT_STATUSES,
            duplicate_rate=settings.duplicate_rate,
            out_of_order_rate=settings.out_of_order_rate,
            delay_max_ms=settings.delay_max_ms,
            rate_limit_per_second=settings.rate_limit_per_second,
            seed=seed,
            dedupe=settings.dedupe,
            status_events=settings.status_events,
            fail_next=0,
            fail_status=503,
            webhook_url=settings.webhook_url,
        )
        self.stats = MetaStats()
        self.ledger = CallLedger()
        self._messages: OrderedDict[str, SentMessage] = OrderedDict()
        self._by_client_id: dict[str, str] = {}
        self._window = SlidingLog()

    @property
    def config(self) -> MetaConfig:
        """The current behaviour switches."""
        return self._config

    @property
    def rng(self) -> random.Random:
        """The seeded RNG every random decision draws from."""
        return self._rng

    def configure(self, patch: ConfigPatch) -> MetaConfig:
        """Merge the given fields into the config; a given `seed` (null = random) reseeds."""
        config = merged(self._config, patch, skip=("seed",))
        if patch.seed is not msgspec.UNSET:
            seed = patch.seed if patch.seed is not None else secrets.randbits(32)
            self._rng.seed(seed)
            config = msgspec.structs.replace(config, seed=seed)
        self._config = config
        return self._config

    def reset(self) -> None:
        """Forget sent messages and the ledger, zero the stats and the rate-limit window (config
        stays)."""
        self.stats = MetaStats()
        self.ledger.clear()
        self._messages.clear()
        self._by_client_id.clear()
        self._window.clear()

    def stats_snapshot(self) -> MetaStats:
        """A copy of the counters."""
        return msgspec.structs.replace(
            self.stats, by_client_message_id=dict(self.stats.by_client_message_id)
        )

    def message(self, provider_message_id: str) -> SentMessage | None:
        """A sent message, if still kept."""
        return self._messages.get(provider_message_id)

    def submit(self, request: SendRequest) -> SendOutcome:
        """Decide one send: validate, rate limit, injected failures, de-duplication, accept.
        The ledger counts it under its clientMessageId (a de-duplicated answer is no new send)."""
        outcome = self._decide(request)
        self.ledger.record(request.client_message_id, accepted=outcome.message is not None)
        return outcome

    def _decide(self, request: SendRequest) -> SendOutcome:
        self.count_received(request.client_message_id)
        send = _validate(request)
        if isinstance(send, str):
            return self._fail(400, send)
        retry_after = self._rate_limited()
        if retry_after is not None:
            self.stats.rate_limited += 1
            body = SendError(error="rate limit exceeded", retryable=True)
            return SendOutcome(429, body, retry_after, outcome="rate_limited")
        failure = self._take_failure()
        if failure is not None:
            return self._fail(failure, f"{_REASONS.get(failure, 'error')} (simulated)")
        original = self._original(send.client_message_id)
        if original is not None:
            self.stats.deduplicated += 1
            accepted = SendAccepted(
                provider_message_id=original.provider_message_id, timestamp=original.timestamp
            )
            return SendOutcome(200, accepted, outcome="deduplicated")
        return self._accept(send)

    def count_received(self, client_message_id: str | None) -> None:
        """Count one POST /messages (also one whose body could not be read)."""
        self.stats.received += 1
        if client_message_id:
            counts = self.stats.by_client_message_id
            counts[client_message_id] = counts.get(client_message_id, 0) + 1

    def count_unreadable(self, detail: str | None = None) -> SendOutcome:
        """A POST /messages whose body is not a JSON object of the expected types."""
        self.count_received(None)
        self.ledger.record(None, accepted=False)
        error = "the body must be a JSON object with string fields"
        return self._fail(400, f"{error} ({detail})" if detail else error)

    def _fail(self, status_code: int, error: str) -> SendOutcome:
        self.stats.failed += 1
        retryable = is_retryable(status_code)
        retry_after = self._settings.retry_after_s if status_code == 429 else None
        outcome = "invalid" if status_code == 400 else "failed"
        body = SendError(error=error, retryable=retryable)
        return SendOutcome(status_code, body, retry_after, outcome=outcome)

    def _rate_limited(self) -> int | None:
        """Sliding one-second window: the seconds to wait, or None when the send may go."""
        return self._window.admit(self._clock(), _WINDOW_S, self._config.rate_limit_per_second)

    def _take_failure(self) -> int | None:
        config = self._config
        fail_next, status = take_failure(
            self._rng,
            fail_next=config.fail_next,
            next_failure=config.fail_status,
            failure_rate=config.failure_rate,
            choices=config.failure_statuses,
        )
        if fail_next != config.fail_next:
            self._config = msgspec.structs.replace(config, fail_next=fail_next)
        return status

    def _original(self, client_message_id: str | None) -> SentMessage | None:
        if not self._config.dedupe or not client_message_id:
            return None
        provider_message_id = self._by_client_id.get(client_message_id)
        return None if provider_message_id is None else self._messages.get(provider_message_id)

    def _accept(self, send: _ValidSend) -> SendOutcome:
        message = SentMessage(
            provider_message_id=new_id("msg"),
            channel=send.channel,
            to=send.to,
            text=send.text,
            client_message_id=send.client_message_id,
            timestamp=format_timestamp(datetime.now(UTC)),
        )
        self._keep(message)
        self.stats.accepted += 1
        accepted = SendAccepted(
            provider_message_id=message.provider_message_id, timestamp=message.timestamp
        )
        return SendOutcome(200, accepted, message=message)

    def _keep(self, message: SentMessage) -> None:
        self._messages[message.provider_message_id] = message
        if message.client_message_id:
            self._by_client_id[message.client_message_id] = message.provider_message_id
        while len(self._messages) > self._settings.max_messages:
            _, dropped = self._messages.popitem(last=False)
            cid = dropped.client_message_id
            if cid and self._by_client_id.get(cid) == dropped.provider_message_id:
                del self._by_client_id[cid]


@dataclass(frozen=True, slots=True)
class _ValidSend:
    channel: Channel
    to: str
    text: str
    client_message_id: str | None


def _validate(request: SendRequest) -> _ValidSend | str:
    """The checked send, or why the request is not a valid one."""
    channel, to, text = request.channel, request.to, request.text
    if channel is None or to is None or text is None:
        missing = [n for n, v in (("channel", channel), ("to", to), ("text", text)) if v is None]
        return f"missing field `{missing[0]}`"
    known = _CHANNELS.get(channel)
    if known is None:
        return f"unknown channel {channel!r}: expected one of {', '.join(CHANNELS)}"
    if not to.strip():
        return "`to` must not be empty"
    if not text.strip():
        return "`text` must not be empty"
    cid = request.client_message_id
    if cid is not None and not cid.strip():
        return "`clientMessageId` must not be empty when given"
    return _ValidSend(channel=known, to=to, text=text, client_message_id=cid)
