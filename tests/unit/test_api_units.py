"""The API's pure pieces: request model, date bounds, cursors, idempotency keys, problem mapping."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from litestar.exceptions import (
    ClientException,
    NotAuthorizedException,
    NotFoundException,
    SerializationException,
    TooManyRequestsException,
    ValidationException,
)
from prometheus_client import REGISTRY
from pydantic import ValidationError

from relaybox.api.auth import InsecureSecretError, check_secret
from relaybox.api.emails.query import parse_bound, today_bounds
from relaybox.api.emails.schemas import SendEmailRequest
from relaybox.api.errors import ApiError, http_problem
from relaybox.api.idempotency import lock_key, request_hash, validate_key
from relaybox.api.middleware import edge_middleware
from relaybox.api.pagination import decode_cursor, encode_cursor
from relaybox.api.settings import (
    PLACEHOLDER_SECRET,
    ApiSettings,
    AuthSettings,
    MetaGatewaySettings,
    PushReceiptSettings,
)

TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")

# --- SendEmailRequest -----------------------------------------------------------------------


def test_request_normalizes_addresses_and_keeps_the_alias() -> None:
    request = SendEmailRequest.model_validate(
        {"to": "Alice@EXAMPLE.com", "from": "bob@Example.ORG", "subject": "s", "html": "<p>"}
    )
    assert request.to == "Alice@example.com"
    assert request.from_ == "bob@example.org"
    assert request.model_dump(by_alias=True)["from"] == "bob@example.org"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"to": "a@b.org", "subject": "s"}, ("html",)),
        ({"to": "a@b.org", "subject": "s\x7f", "text": "t"}, ("subject",)),
        ({"to": "a@b.org", "subject": "s", "text": "t", "cc": "x"}, ("cc",)),
    ],
)
def test_request_errors_carry_the_field(body: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as raised:
        SendEmailRequest.model_validate(body)
    assert [e["loc"] for e in raised.value.errors()] == [loc]


def test_an_invalid_text_does_not_also_report_a_missing_body() -> None:
    with pytest.raises(ValidationError) as raised:
        SendEmailRequest.model_validate({"to": "a@b.org", "subject": "s", "text": "x" * 10_001})
    assert [e["loc"] for e in raised.value.errors()] == [("text",)]


# --- from/to bounds and today ---------------------------------------------------------------


def test_date_bounds_cover_whole_local_days() -> None:
    assert parse_bound("2024-06-15", "from", TOKYO, end=False) == datetime(
        2024, 6, 14, 15, tzinfo=UTC
    )
    assert parse_bound("2024-06-15", "to", TOKYO, end=True) == datetime(2024, 6, 15, 15, tzinfo=UTC)


def test_datetime_bounds_keep_their_offset_or_take_the_zone() -> None:
    assert parse_bound("2024-06-15T10:00:00Z", "from", TOKYO, end=False) == datetime(
        2024, 6, 15, 10, tzinfo=UTC
    )
    assert parse_bound("2024-06-15T10:00:00", "from", TOKYO, end=False) == datetime(
        2024, 6, 15, 1, tzinfo=UTC
    )
    assert parse_bound(None, "from", TOKYO, end=False) is None


@pytest.mark.parametrize("value", ["", "2024-6-1", "2024-02-30", "soon", "2024-06-15T24:61"])
def test_bad_bound_names_its_parameter(value: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_bound(value, "to", TOKYO, end=True)
    assert raised.value.extra == {"field": "to"}
    assert "'to'" in raised.value.detail


def test_today_bounds_in_a_zone_behind_utc() -> None:
    day, start, end = today_bounds(datetime(2024, 6, 15, 2, tzinfo=UTC), NEW_YORK)
    assert day == date(2024, 6, 14)
    assert (start, end) == (
        datetime(2024, 6, 14, 4, tzinfo=UTC),
        datetime(2024, 6, 15, 4, tzinfo=UTC),
    )


def test_today_bounds_on_a_23_hour_day() -> None:
    day, start, end = today_bounds(datetime(2024, 3, 10, 12, tzinfo=UTC), NEW_YORK)
    assert day == date(2024, 3, 10)
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=23)


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown timezone"):
        ApiSettings(timezone="Mars/Olympus_Mons")


# --- cursors --------------------------------------------------------------------------------


def test_cursor_round_trip_is_url_safe() -> None:
    row_id = uuid.uuid4()
    at = datetime(2024, 6, 15, 1, 2, 3, 456789, tzinfo=UTC)
    cursor = encode_cursor(at, row_id)
    assert all(c.isalnum() or c in "-_" for c in cursor)
    assert decode_cursor(cursor) == (at, row_id)


@pytest.mark.parametrize("cursor", ["", "%%%", "bnVsbA", "WzEsMiwzXQ", "WyJ4IiwieSJd"])
def test_bad_cursor_names_cursor(cursor: str) -> None:
    with pytest.raises(ApiError) as raised:
        decode_cursor(cursor)
    assert raised.value.extra == {"field": "cursor"}


# --- idempotency keys -----------------------------------------------------------------------


def test_lock_key_joins_without_nul() -> None:
    assert lock_key("client", "email.send", "k-1") == "client\x1femail.send\x1fk-1"
    assert "\x00" not in lock_key("a", "b", "c")


def test_request_hash_ignores_key_order() -> None:
    assert request_hash({"a": 1, "b": [1, 2]}) == request_hash({"b": [1, 2], "a": 1})
    assert request_hash({"a": 1}) != request_hash({"a": 2})


@pytest.mark.parametrize("key", ["", " ", "a b", "é", "x" * 256, "tab\t"])
def test_malformed_idempotency_key(key: str) -> None:
    with pytest.raises(ApiError) as raised:
        validate_key(key)
    assert raised.value.extra == {"field": "Idempotency-Key"}


def test_valid_idempotency_keys() -> None:
    assert validate_key(None) is None
    assert validate_key("!~" * 127 + "x") == "!~" * 127 + "x"


# --- problem mapping ------------------------------------------------------------------------


def test_validation_problem_names_every_field() -> None:
    exc = ValidationException(
        detail="Validation failed for POST /send",
        extra=[
            {"message": "Value error, not a valid email address", "key": "to"},
            {"message": "Field required", "key": "subject"},
        ],
    )
    problem = http_problem(exc)
    assert problem.status_code == 400
    assert problem.title == "Bad Request"
    assert problem.detail == "to: not a valid email address; subject: Field required"
    assert problem.extra == {
        "field": "to",
        "errors": [
            {"field": "to", "message": "not a valid email address"},
            {"field": "subject", "message": "Field required"},
        ],
    }


def test_missing_body_problem() -> None:
    exc = ValidationException(extra=[{"message": "'data'", "key": "data", "source": "body"}])
    problem = http_problem(exc)
    assert problem.extra == {
        "field": "body",
        "errors": [{"field": "body", "message": "a JSON object is required"}],
    }


def test_malformed_json_problem() -> None:
    try:
        raise ClientException("JSON is malformed") from SerializationException("bad")
    except ClientException as exc:
        problem = http_problem(exc)
    assert problem.extra == {"field": "body"}
    assert "not valid JSON" in problem.detail


def test_unauthorized_problem_asks_for_a_bearer_token() -> None:
    problem = http_problem(NotAuthorizedException())
    assert problem.status_code == 401
    assert problem.headers == {"WWW-Authenticate": "Bearer"}
    assert "bearer token" in problem.detail.lower()


def test_rate_limit_problem_has_retry_after() -> None:
    headers = {"RateLimit-Reset": "17", "RateLimit-Limit": "2"}
    problem = http_problem(TooManyRequestsException(headers=headers))
    assert problem.status_code == 429
    assert problem.headers is not None
    assert problem.headers["Retry-After"] == "17"
    assert problem.headers["RateLimit-Limit"] == "2"
    zero = http_problem(TooManyRequestsException(headers={"RateLimit-Reset": "0"}))
    assert zero.headers is not None and zero.headers["Retry-After"] == "1"


def test_plain_http_errors_get_a_useful_detail() -> None:
    problem = http_problem(NotFoundException())
    assert (problem.status_code, problem.title) == (404, "Not Found")
    assert problem.detail != "Not Found"
    assert http_problem(NotFoundException("no email with id 1")).detail == "no email with id 1"


# --- the JWT secret -------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [PLACEHOLDER_SECRET, "x" * 31])
def test_weak_secret_refused_outside_dev_mode(secret: str) -> None:
    with pytest.raises(InsecureSecretError):
        check_secret(ApiSettings(auth=AuthSettings(jwt_secret=secret)))
    check_secret(ApiSettings(dev_mode=True, auth=AuthSettings(jwt_secret=secret)))


def test_strong_secret_accepted() -> None:
    check_secret(
        ApiSettings(
            auth=AuthSettings(jwt_secret="s" * 32),
            meta=MetaGatewaySettings(webhook_secret="a-provider-signing-secret"),
            push=PushReceiptSettings(webhook_secret="the-push-gateway-signing-secret"),
        )
    )


def test_placeholder_is_long_enough_for_hs256_in_dev() -> None:
    assert len(PLACEHOLDER_SECRET.encode()) >= 32


async def test_a_cancelled_request_is_logged_and_counted_as_499(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def cancelled(_scope: Any, _receive: Any, _send: Any) -> None:
        raise asyncio.CancelledError

    edge = edge_middleware(trace_context=False)(cancelled)
    scope = {"type": "http", "method": "GET", "path": "/unit-cancel", "headers": []}
    before = REGISTRY.get_sample_value(
        "relaybox_api_requests_total",
        {"method": "GET", "path": "/unit-cancel", "status_code": "499", "app_name": "relaybox_api"},
    )
    with (
        caplog.at_level(logging.INFO, "relaybox.api.access"),
        pytest.raises(asyncio.CancelledError),
    ):
        await edge(scope, None, None)  # type: ignore[arg-type]
    after = REGISTRY.get_sample_value(
        "relaybox_api_requests_total",
        {"method": "GET", "path": "/unit-cancel", "status_code": "499", "app_name": "relaybox_api"},
    )
    assert (after or 0) - (before or 0) == 1
    assert [r.__dict__["status"] for r in caplog.records if r.name == "relaybox.api.access"] == [
        499
    ]
