"""The email HTTP API mock: tokens, sends, the rate limit, simulated failures and the record."""

from __future__ import annotations

import hmac
import json
import math
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import msgspec
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ValidationError

from relaybox.mock_meta.control import SlidingLog, merged, take_failure
from relaybox.mock_meta.email_api.models import (
    BAD_GATEWAY,
    BODY_TOO_LONG,
    EMPTY_BODY,
    EMPTY_SUBJECT,
    INVALID_CREDENTIALS,
    INVALID_EMAIL,
    INVALID_PAYLOAD,
    INVALID_TOKEN,
    MAX_BODY,
    MAX_SUBJECT,
    RANDOM_FAIL_STATUSES,
    SERVER_ERROR,
    SUBJECT_TOO_LONG,
    UNAVAILABLE,
    EmailApiConfig,
    EmailApiConfigPatch,
    EmailApiHealth,
    EmailApiStats,
    EmailQueued,
    EmailRecord,
    EmailRequest,
    ErrorDetail,
    TokenIssued,
    TokenRequest,
    ValidationErrors,
    ValidationIssue,
    rate_limit_detail,
)
from relaybox.mock_meta.email_api.tokens import TokenIssuer, bearer_token
from relaybox.mock_meta.ledger import CallLedger
from relaybox.mock_meta.meta.models import format_timestamp
from relaybox.mock_meta.meta.state import Clock
from relaybox.mock_meta.metrics import EMAIL_API_SENDS, EMAIL_API_TOKENS
from relaybox.mock_meta.settings import EmailApiMockSettings

Model = TypeVar("Model", bound=BaseModel)
Body = TokenIssued | EmailQueued | ErrorDetail | ValidationErrors

_SIMULATED_DETAILS = {
    400: INVALID_PAYLOAD,
    401: INVALID_TOKEN,
    500: SERVER_ERROR,
    502: BAD_GATEWAY,
    503: UNAVAILABLE,
}
_OUTCOMES = {
    202: "accepted",
    400: "invalid",
    401: "unauthorized",
    422: "unprocessable",
    429: "rate_limited",
}
_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer of the API: status, JSON body and extra headers."""

    status_code: int
    body: Body
    headers: dict[str, str] = field(default_factory=dict)


def _error(status_code: int, detail: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status_code, ErrorDetail(detail=detail), headers or {})


def parse_body(model: type[Model], raw: bytes) -> Model | ValidationErrors:
    """The request model, or FastAPI's 422 detail list (input values are never echoed)."""
    if not raw.strip():
        return ValidationErrors(
            detail=[ValidationIssue(type="missing", loc=["body"], msg="Field required")]
        )
    try:
        decoded = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        position = getattr(exc, "pos", getattr(exc, "start", 0))
        issue = ValidationIssue(
            type="json_invalid", loc=["body", position], msg="JSON decode error"
        )
        return ValidationErrors(detail=[issue])
    try:
        return model.model_validate(decoded)
    except ValidationError as exc:
        issues = [
            ValidationIssue(type=error["type"], loc=["body", *error["loc"]], msg=error["msg"])
            for error in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        return ValidationErrors(detail=issues)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")


def check_email(request: EmailRequest) -> str | None:
    """The contract's 400 detail for a bad address, subject or body; None when valid."""
    try:
        validate_email(request.to, check_deliverability=False)
    except (EmailNotValidError, ValueError):  # ValueError: e.g. a lone surrogate
        return INVALID_EMAIL
    if not request.subject.strip():
        return EMPTY_SUBJECT
    if len(request.subject) > MAX_SUBJECT:
        return SUBJECT_TOO_LONG
    if not request.body.strip():
        return EMPTY_BODY
    if len(request.body) > MAX_BODY:
        return BODY_TOO_LONG
    return None


class EmailApiMock:
    """Everything the email API remembers; synchronous, so each request's decision is atomic."""

    def __init__(self, settings: EmailApiMockSettings, clock: Clock = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._tokens = TokenIssuer(clock)
        self._config = EmailApiConfig(
            fail_next=0,
            fail_status=503,
            failure_rate=0.0,
            delay_ms=0,
            token_ttl_s=settings.token_ttl_s,
            rate_limit_per_window=settings.rate_limit_per_window,
            rate_window_s=settings.rate_window_s,
        )
        self.stats = EmailApiStats()
        self._messages: deque[EmailRecord] = deque(maxlen=settings.max_messages)
        self._admitted = SlidingLog()  # sends the rate limiter let through
        self._accepted = SlidingLog()  # accepted sends, for maxObservedPerWindow
        self._rng = random.Random()
        self.ledger = CallLedger()

    @property
    def config(self) -> EmailApiConfig:
        """The current behaviour switches."""
        return self._config

    def configure(self, patch: EmailApiConfigPatch) -> EmailApiConfig:
        """Merge the given fields into the config; `revokeTokens` invalidates issued tokens."""
        if patch.revoke_tokens:
            self._tokens.revoke_all()
        self._config = merged(self._config, patch, skip=("revoke_tokens",))
        return self._config

    def reset(self) -> None:
        """Forget accepted emails and the ledger, zero the stats and the rate windows (config and
        tokens stay)."""
        self.stats = EmailApiStats()
        self.ledger.clear()
        self._messages.clear()
        self._admitted.clear()
        self._accepted.clear()

    def stats_snapshot(self) -> EmailApiStats:
        """A copy of the counters."""
        return msgspec.structs.replace(self.stats, rejected=dict(self.stats.rejected))

    def messages(self, to: str | None = None) -> list[EmailRecord]:
        """Accepted emails still kept, in arrival order, optionally for one recipient."""
        if to is None:
            return list(self._messages)
        wanted = to.strip().casefold()
        return [record for record in self._messages if record.to.strip().casefold() == wanted]

    @staticmethod
    def health() -> EmailApiHealth:
        """The contract's health answer."""
        return EmailApiHealth(timestamp=format_timestamp(datetime.now(UTC)))

    def issue_token(self, raw: bytes) -> Answer:
        """Answer POST /auth/token."""
        request = parse_body(TokenRequest, raw)
        if isinstance(request, ValidationErrors):
            return self._token_refused("invalid_request", Answer(422, request))
        if not self._credentials_match(request):
            return self._token_refused("invalid_credentials", _error(401, INVALID_CREDENTIALS))
        ttl_s = self._config.token_ttl_s
        token = self._tokens.issue(request.username, ttl_s)
        self.stats.tokens_issued += 1
        EMAIL_API_TOKENS.labels("issued").inc()
        body = TokenIssued(access_token=token, expires_in=ttl_s)
        return Answer(200, body, {"Cache-Control": "no-store"})

    def send(
        self, authorization: str | None, raw: bytes, idempotency_key: str | None = None
    ) -> Answer:
        """Answer POST /send-email: token, body shape, simulated failure, checks, rate limit.
        Every call is in the ledger under its `Idempotency-Key`."""
        answer = self._decide_send(authorization, raw, idempotency_key)
        self.stats.received += 1
        code = answer.status_code
        self.ledger.record(idempotency_key, accepted=code == 202)
        if code == 202:
            self.stats.accepted += 1
        else:
            key = str(code)
            self.stats.rejected[key] = self.stats.rejected.get(key, 0) + 1
        EMAIL_API_SENDS.labels(_OUTCOMES.get(code, "failed")).inc()
        return answer

    def _decide_send(
        self, authorization: str | None, raw: bytes, idempotency_key: str | None
    ) -> Answer:
        if self._tokens.verify(bearer_token(authorization)) is None:
            return _error(401, INVALID_TOKEN, _UNAUTHORIZED_HEADERS)
        request = parse_body(EmailRequest, raw)
        if isinstance(request, ValidationErrors):
            return Answer(422, request)
        simulated = self._take_failure()
        if simulated is not None:
            return simulated
        detail = check_email(request)
        if detail is not None:
            return _error(400, detail)
        now = self._clock()
        retry_after = self._admit(now)
        if retry_after is not None:
            self.stats.rate_limited += 1
            return self._rate_limited(retry_after)
        return self._accept(request, now, idempotency_key)

    def _take_failure(self) -> Answer | None:
        config = self._config
        fail_next, status = take_failure(
            self._rng,
            fail_next=config.fail_next,
            next_failure=config.fail_status,
            failure_rate=config.failure_rate,
            choices=RANDOM_FAIL_STATUSES,
        )
        if fail_next != config.fail_next:
            self._config = msgspec.structs.replace(config, fail_next=fail_next)
        if status is None:
            return None
        self.stats.simulated_failures += 1
        if status == 429:
            return self._rate_limited(max(1, math.ceil(config.rate_window_s)))
        headers = _UNAUTHORIZED_HEADERS if status == 401 else None
        return _error(status, _SIMULATED_DETAILS[status], headers)

    def _admit(self, now: float) -> int | None:
        """Take a slot of the sliding window: None, or the seconds until one frees."""
        config = self._config
        return self._admitted.admit(now, config.rate_window_s, config.rate_limit_per_window)

    def _rate_limited(self, retry_after_s: int) -> Answer:
        config = self._config
        limit = max(config.rate_limit_per_window, 1)
        detail = rate_limit_detail(limit, config.rate_window_s)
        return _error(429, detail, {"Retry-After": str(retry_after_s)})

    def _accept(self, request: EmailRequest, now: float, idempotency_key: str | None) -> Answer:
        record = EmailRecord(
            message_id=f"msg_{uuid.uuid4().hex}",
            to=request.to,
            subject=request.subject,
            body=request.body,
            accepted_at=format_timestamp(datetime.now(UTC)),
            idempotency_key=idempotency_key,
        )
        self._messages.append(record)
        self._accepted.prune(now, self._config.rate_window_s)
        self._accepted.add(now)
        observed = max(self.stats.max_observed_per_window, len(self._accepted))
        self.stats.max_observed_per_window = observed
        return Answer(202, EmailQueued(message_id=record.message_id))

    def _credentials_match(self, request: TokenRequest) -> bool:
        settings = self._settings
        username_ok = hmac.compare_digest(_utf8(request.username), _utf8(settings.username))
        password_ok = hmac.compare_digest(_utf8(request.password), _utf8(settings.password))
        return username_ok and password_ok

    def _token_refused(self, outcome: str, answer: Answer) -> Answer:
        self.stats.token_requests_rejected += 1
        EMAIL_API_TOKENS.labels(outcome).inc()
        return answer
