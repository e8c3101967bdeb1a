"""Wire shapes of the email HTTP API mock: contract requests and answers, config, stats, records."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType
from pydantic import BaseModel

API_VERSION = "1.0.0"
MAX_SUBJECT = 255
MAX_BODY = 10_000

# the contract's `detail` texts
INVALID_CREDENTIALS = "Invalid credentials"
INVALID_TOKEN = "Invalid token"  # noqa: S105 - an error text, not a secret
INVALID_EMAIL = "Invalid email address format"
EMPTY_SUBJECT = "Subject cannot be empty"
SUBJECT_TOO_LONG = f"Subject exceeds maximum length of {MAX_SUBJECT} characters"
EMPTY_BODY = "Email body cannot be empty"
BODY_TOO_LONG = f"Email body exceeds maximum length of {MAX_BODY} characters"
INVALID_PAYLOAD = "Invalid payload"
SERVER_ERROR = "Internal server error occurred while processing email"
BAD_GATEWAY = "Bad gateway - external email service unavailable"
UNAVAILABLE = "Service temporarily unavailable for maintenance"

FAIL_STATUSES = (400, 401, 429, 500, 502, 503)
FailStatus = Literal[400, 401, 429, 500, 502, 503]
Count = Annotated[int, msgspec.Meta(ge=0)]
DelayMs = Annotated[int, msgspec.Meta(ge=0, le=60_000)]
TtlS = Annotated[int, msgspec.Meta(ge=1, le=86_400)]
WindowS = Annotated[float, msgspec.Meta(gt=0, le=3600)]
Rate = Annotated[float, msgspec.Meta(ge=0, le=1, description="probability in [0, 1]; 0 = never")]
RANDOM_FAIL_STATUSES = (500, 502, 503)


def rate_limit_detail(limit: int, window_s: float) -> str:
    """The 429 text, e.g. `Rate limit exceeded. Maximum 1 request per 10 seconds.`"""
    requests = "request" if limit == 1 else "requests"
    seconds = "second" if window_s == 1 else "seconds"
    return f"Rate limit exceeded. Maximum {limit} {requests} per {window_s:g} {seconds}."


# --- requests (pydantic, so a malformed one gets FastAPI's 422 detail list) ------------------


class TokenRequest(BaseModel):
    """POST /auth/token."""

    username: str
    password: str


class EmailRequest(BaseModel):
    """POST /send-email; the address, subject and body are checked by the mock (400s)."""

    to: str
    subject: str
    body: str


# --- answers of the contract ------------------------------------------------------------------


class TokenIssued(msgspec.Struct, frozen=True, kw_only=True):
    """A bearer token and its lifetime in seconds."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the scheme, not a secret
    expires_in: int


class EmailQueued(msgspec.Struct, frozen=True, kw_only=True):
    """The email was accepted for sending."""

    message_id: str
    status: Literal["queued"] = "queued"


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    """Every error of the contract but 422."""

    detail: str


class ValidationIssue(msgspec.Struct, frozen=True, kw_only=True):
    """One item of a FastAPI-style 422: `loc` starts with "body"."""

    type: str
    loc: list[str | int]
    msg: str


class ValidationErrors(msgspec.Struct, frozen=True, kw_only=True):
    """A 422 answer."""

    detail: list[ValidationIssue]


class EmailApiHealth(msgspec.Struct, frozen=True, kw_only=True):
    """GET /health of the contract."""

    status: Literal["healthy"] = "healthy"
    timestamp: str
    version: str = API_VERSION


# --- /_mock: config, stats and the record of accepted emails ------------------------------------


class EmailApiConfig(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The behaviour switches; limits start from the settings. After the `fail_next` sends,
    a random `failure_rate` of the others get a 500, 502 or 503."""

    fail_next: Count
    fail_status: FailStatus
    failure_rate: Rate
    delay_ms: DelayMs
    token_ttl_s: TtlS
    rate_limit_per_window: Count
    rate_window_s: WindowS


class EmailApiConfigPatch(
    msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True
):
    """POST /_mock/config: given fields replace the current ones; `revokeTokens` invalidates
    every token issued so far."""

    fail_next: Count | UnsetType = UNSET
    fail_status: FailStatus | UnsetType = UNSET
    failure_rate: Rate | UnsetType = UNSET
    delay_ms: DelayMs | UnsetType = UNSET
    token_ttl_s: TtlS | UnsetType = UNSET
    rate_limit_per_window: Count | UnsetType = UNSET
    rate_window_s: WindowS | UnsetType = UNSET
    revoke_tokens: bool = False


class EmailApiStats(msgspec.Struct, kw_only=True, rename="camel"):
    """Counters since start or the last reset. `received` counts POST /send-email;
    received = accepted + sum(rejected); `rejected` is keyed by status code (as a string);
    `rateLimited` counts the limiter's own 429s (a simulated one is only in `rejected`);
    `maxObservedPerWindow` is the most emails accepted within any one rate window."""

    tokens_issued: int = 0
    token_requests_rejected: int = 0
    received: int = 0
    accepted: int = 0
    rejected: dict[str, int] = msgspec.field(default_factory=dict)
    rate_limited: int = 0
    simulated_failures: int = 0
    max_observed_per_window: int = 0


class EmailRecord(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One accepted email as it arrived, with the caller's `Idempotency-Key` if it sent one."""

    message_id: str
    to: str
    subject: str
    body: str
    accepted_at: str
    idempotency_key: str | None = None


class EmailRecordList(msgspec.Struct, frozen=True, kw_only=True):
    """Accepted emails in arrival order and how many matched."""

    data: list[EmailRecord]
    total: int
