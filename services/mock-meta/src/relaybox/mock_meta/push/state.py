"""The push mock's in-memory state: config, seeded streams, the decision of each send, the
records, stats, ledger and rate limit. Synchronous, so one request's decision is atomic."""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import msgspec

from relaybox.mock_meta.control import SlidingLog, merged, take_failure
from relaybox.mock_meta.email_api.tokens import bearer_token
from relaybox.mock_meta.ledger import CallLedger
from relaybox.mock_meta.meta.state import Clock
from relaybox.mock_meta.metrics import PUSH_RECEIPTS, PUSH_SENDS
from relaybox.mock_meta.push.models import (
    MAX_PAYLOAD_BYTES,
    ErrorBody,
    FcmError,
    FcmErrorDetail,
    Fixed,
    PushConfig,
    PushConfigPatch,
    PushRecord,
    PushStats,
    SendAccepted,
    SendRequest,
)
from relaybox.mock_meta.push.network import Streams, device, draw_ms, is_unregistered
from relaybox.mock_meta.settings import PushMockSettings

_WINDOW_S = 1.0
# status -> (Google status, FCM error code or None, message)
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("INVALID_ARGUMENT", "INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", None, "Request is missing a valid authentication credential."),
    403: ("PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch."),
    404: ("NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded for sending messages."),
    500: ("INTERNAL", "INTERNAL", "Internal error encountered."),
    503: ("UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable."),
}
_RETRY_AFTER_STATUSES = (429, 503)


def fcm_error(status_code: int, message: str | None = None) -> ErrorBody:
    """FCM v1's error body for `status_code` (one of the statuses the mock answers)."""
    status, error_code, default_message = _ERRORS[status_code]
    details = () if error_code is None else (FcmErrorDetail(error_code=error_code),)
    return ErrorBody(
        error=FcmError(
            code=status_code, message=message or default_message, status=status, details=details
        )
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer of the send route, and how long to hold it back."""

    status_code: int
    body: SendAccepted | ErrorBody
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """An accepted push a receipt is owed for, after `delay_s` (and any offline window)."""

    record: PushRecord
    delay_s: float


@dataclass(frozen=True, slots=True)
class Submitted:
    """The answer to a send, and the receipt to deliver (None: refused or lost)."""

    answer: Answer
    delivery: Delivery | None


class PushState:
    """Everything the gateway remembers."""

    def __init__(self, settings: PushMockSettings, clock: Clock = time.time) -> None:
        self._settings = settings
        self._clock = clock
        seed = settings.seed if settings.seed is not None else secrets.randbits(32)
        self._streams = Streams.seeded(seed)
        self._config = PushConfig(
            seed=seed,
            answer_latency=Fixed(),
            receipt_latency=Fixed(),
            loss=0.0,
            fail_next=0,
            fail_status=503,
            failure_rate=0.0,
            failure_statuses=(500, 503),
            retry_after_s=settings.retry_after_s,
            rate_limit_per_second=settings.rate_limit_per_second,
            unregistered_tokens=(),
            devices={},
            receipt_url=settings.receipt_url,
        )
        self.stats = PushStats()
        self.ledger = CallLedger()
        self._records: deque[PushRecord] = deque(maxlen=settings.max_messages)
        self._window = SlidingLog()

    @property
    def config(self) -> PushConfig:
        """The current behaviour switches."""
        return self._config

    def now(self) -> float:
        """The clock offline windows and records are measured on (epoch seconds by default)."""
        return self._clock()

    def configure(self, patch: PushConfigPatch) -> PushConfig:
        """Merge the given fields into the config; a given `seed` (null = random) reseeds."""
        config = merged(self._config, patch, skip=("seed",))
        if patch.seed is not msgspec.UNSET:
            seed = patch.seed if patch.seed is not None else secrets.randbits(32)
            self._streams = Streams.seeded(seed)
            config = msgspec.structs.replace(config, seed=seed)
        self._config = config
        return config

    def reset(self) -> None:
        """Forget the records and the ledger, zero the stats and the rate window (config stays)."""
        self.stats = PushStats()
        self.ledger.clear()
        self._records.clear()
        self._window.clear()

    def stats_snapshot(self) -> PushStats:
        """A copy of the counters."""
        return msgspec.structs.replace(self.stats, rejected=dict(self.stats.rejected))

    def records(self, token: str | None = None) -> list[PushRecord]:
        """Push calls still kept, in arrival order, optionally to one device token."""
        return [r for r in self._records if token is None or r.token == token]

    def submit(
        self, authorization: str | None, raw: bytes, idempotency_key: str | None
    ) -> Submitted:
        """Decide one POST /push/v1/messages:send; recorded, counted and in the ledger under its
        `Idempotency-Key`, accepted or not."""
        now = self._clock()
        answer_delay_ms = draw_ms(self._config.answer_latency, self._streams.answer_latency)
        record = PushRecord(
            received_at=now,
            status=0,
            outcome="",
            token=None,
            data={},
            idempotency_key=idempotency_key,
            answer_delay_ms=answer_delay_ms,
        )
        outcome, answer, delivery = self._decide(authorization, raw, record, now)
        answer = Answer(answer.status_code, answer.body, answer.headers, answer_delay_ms / 1000)
        record.status, record.outcome = answer.status_code, outcome
        self._records.append(record)
        self._count(answer.status_code, outcome)
        self.ledger.record(idempotency_key, accepted=answer.status_code == 200)
        return Submitted(answer, delivery)

    def _decide(
        self, authorization: str | None, raw: bytes, record: PushRecord, now: float
    ) -> tuple[str, Answer, Delivery | None]:
        request = _parse(raw)
        if isinstance(request, SendRequest):
            record.token, record.data = request.message.token, dict(request.message.data)
        if not self._authorized(authorization):
            return "unauthenticated", _refuse(401, {"WWW-Authenticate": "Bearer"}), None
        retry_after = self._window.admit(now, _WINDOW_S, self._config.rate_limit_per_second)
        if retry_after is not None:
            return "rate_limited", _refuse(429, {"Retry-After": str(retry_after)}), None
        simulated = self._take_failure()
        if simulated is not None:
            return "simulated_failure", simulated, None
        if isinstance(request, str):
            return "invalid", Answer(400, fcm_error(400, request)), None
        if is_unregistered(self._config, request.message.token):
            return "unregistered", _refuse(404), None
        return "accepted", *self._accept(record)

    def _authorized(self, authorization: str | None) -> bool:
        key = bearer_token(authorization)
        expected = self._settings.server_key
        return key is not None and hmac.compare_digest(key.encode(), expected.encode())

    def _take_failure(self) -> Answer | None:
        config = self._config
        fail_next, status = take_failure(
            self._streams.failures,
            fail_next=config.fail_next,
            next_failure=config.fail_status,
            failure_rate=config.failure_rate,
            choices=config.failure_statuses,
        )
        if fail_next != config.fail_next:
            self._config = msgspec.structs.replace(config, fail_next=fail_next)
        if status is None:
            return None
        headers = {}
        if status in _RETRY_AFTER_STATUSES:
            headers["Retry-After"] = str(config.retry_after_s)
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        message = f"{_ERRORS[status][2]} (simulated)"
        return Answer(status, fcm_error(status, message), headers)

    def _accept(self, record: PushRecord) -> tuple[Answer, Delivery | None]:
        config, token = self._config, record.token or ""
        override = device(config, token)
        record.name = f"projects/{self._settings.project}/messages/{uuid.uuid4().hex}"
        record.receipt_id = f"rcpt_{uuid.uuid4().hex}"
        loss = config.loss if override.loss is None else override.loss
        lost = loss > 0 and self._streams.loss.random() < loss
        latency = override.receipt_latency or config.receipt_latency
        record.receipt_delay_ms = draw_ms(latency, self._streams.receipt_latency)
        answer = Answer(200, SendAccepted(name=record.name))
        if lost:
            record.receipt = "lost"
            self.stats.lost += 1
            PUSH_RECEIPTS.labels("lost").inc()
            return answer, None
        record.receipt = "pending"
        return answer, Delivery(record, record.receipt_delay_ms / 1000)

    def _count(self, status_code: int, outcome: str) -> None:
        PUSH_SENDS.labels(outcome).inc()
        stats = self.stats
        stats.received += 1
        if status_code == 200:
            stats.accepted += 1
            return
        key = str(status_code)
        stats.rejected[key] = stats.rejected.get(key, 0) + 1
        if outcome == "rate_limited":
            stats.rate_limited += 1
        elif outcome == "simulated_failure":
            stats.simulated_failures += 1
        elif outcome == "unregistered":
            stats.unregistered += 1


def _refuse(status_code: int, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status_code, fcm_error(status_code), headers or {})


def _parse(raw: bytes) -> SendRequest | str:
    """The send, or why it is not a valid one (the 400's message)."""
    try:
        request = msgspec.json.decode(raw, type=SendRequest)
    except msgspec.DecodeError as exc:  # ValidationError included
        return f"Invalid JSON payload received. {exc}"
    message = request.message
    if not message.token.strip():
        return "The registration token is empty: `message.token` is required."
    payload = msgspec.json.encode([message.data, message.notification])
    if len(payload) > MAX_PAYLOAD_BYTES:
        return f"Message payload exceeds {MAX_PAYLOAD_BYTES} bytes."
    return request
