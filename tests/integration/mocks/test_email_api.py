"""Integration tests of the mock email HTTP API mounted by mock-meta under /email-api.

The app runs in-process (ASGI transport). Token expiry and the rate window run on an injected
fake clock, so nothing here sleeps on them. The contract:
../shared/contracts/email-api.openapi.json.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest
from litestar import Litestar

from relaybox.mock_meta.app import create_app
from relaybox.mock_meta.email_api.mock import EmailApiMock
from relaybox.mock_meta.settings import (
    DEV_EMAIL_API_PASSWORD,
    DEV_EMAIL_API_USERNAME,
    EmailApiMockSettings,
    MockMetaSettings,
    SmtpSinkSettings,
)

USERNAME = "mailer"
PASSWORD = "s3cret-test-password"
TTL_S = 60
WINDOW_S = 10.0
MESSAGE_ID = re.compile(r"^msg_[0-9a-f]{32}$")
RATE_DETAIL = "Rate limit exceeded. Maximum 1 request per 10 seconds."
SIMULATED_DETAILS = {
    400: "Invalid payload",
    401: "Invalid token",
    429: RATE_DETAIL,
    500: "Internal server error occurred while processing email",
    502: "Bad gateway - external email service unavailable",
    503: "Service temporarily unavailable for maintenance",
}


class FakeClock:
    """Seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _email_settings(**overrides: Any) -> EmailApiMockSettings:
    values: dict[str, Any] = {
        "username": USERNAME,
        "password": PASSWORD,
        "token_ttl_s": TTL_S,
        "rate_limit_per_window": 1,
        "rate_window_s": WINDOW_S,
    }
    values.update(overrides)
    return EmailApiMockSettings(**values)


def _settings(email_api: EmailApiMockSettings | None = None) -> MockMetaSettings:
    return MockMetaSettings(
        smtp_sink=SmtpSinkSettings(port=0),
        email_api=email_api if email_api is not None else _email_settings(),
    )


def _asgi(app: Litestar) -> httpx.ASGITransport:
    # httpx types the ASGI callable more narrowly than Litestar declares it
    return httpx.ASGITransport(app=cast("Any", app))


def _client(app: Litestar) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=_asgi(app), base_url="http://t/email-api")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings() -> EmailApiMockSettings:
    return _email_settings()


@pytest.fixture
def mock(settings: EmailApiMockSettings, clock: FakeClock) -> EmailApiMock:
    return EmailApiMock(settings, clock=clock)


@pytest.fixture
async def http(mock: EmailApiMock) -> AsyncIterator[httpx.AsyncClient]:
    # no app.lifespan(): the email API needs nothing started (see test_smtp_sink.py)
    async with _client(create_app(_settings(), email_api=mock)) as client:
        yield client


async def _token(http: httpx.AsyncClient) -> str:
    response = await http.post("/auth/token", json={"username": USERNAME, "password": PASSWORD})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _email(to: str = "alice@example.com", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"to": to, "subject": "Welcome", "body": "Your token: tok-alice"}
    body.update(overrides)
    return body


async def _send(
    http: httpx.AsyncClient, token: str, payload: dict[str, Any] | None = None
) -> httpx.Response:
    return await http.post("/send-email", json=payload or _email(), headers=_auth(token))


async def _configure(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await http.post("/_mock/config", json=fields)
    assert response.status_code == 200, response.text
    config: dict[str, Any] = response.json()
    return config


async def _stats(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/_mock/stats")
    assert response.status_code == 200, response.text
    stats: dict[str, Any] = response.json()
    return stats


async def _messages(http: httpx.AsyncClient, to: str | None = None) -> dict[str, Any]:
    params = {} if to is None else {"to": to}
    response = await http.get("/_mock/messages", params=params)
    assert response.status_code == 200, response.text
    messages: dict[str, Any] = response.json()
    return messages


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


# --- POST /auth/token -------------------------------------------------------------------------


async def test_token_is_issued_for_the_configured_credentials(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    response = await http.post("/auth/token", json={"username": USERNAME, "password": PASSWORD})

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert (body["token_type"], body["expires_in"]) == ("bearer", TTL_S)
    header, _, _ = body["access_token"].split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "HS256", "typ": "JWT"}
    claims = _claims(body["access_token"])
    assert (claims["sub"], claims["exp"] - claims["iat"]) == (USERNAME, TTL_S)
    assert claims["iat"] == clock.now
    assert PASSWORD not in response.text
    assert (await _stats(http))["tokensIssued"] == 1


async def test_each_token_is_distinct(http: httpx.AsyncClient) -> None:
    assert await _token(http) != await _token(http)


@pytest.mark.parametrize(
    "credentials",
    [
        {"username": USERNAME, "password": "wrong"},
        {"username": "someone-else", "password": PASSWORD},
        {"username": "", "password": ""},
        {"username": USERNAME.upper(), "password": PASSWORD},
    ],
)
async def test_wrong_credentials_are_401(
    http: httpx.AsyncClient, credentials: dict[str, str]
) -> None:
    response = await http.post("/auth/token", json=credentials)

    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid credentials"}
    stats = await _stats(http)
    assert (stats["tokensIssued"], stats["tokenRequestsRejected"]) == (0, 1)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (
            json.dumps({"username": USERNAME}),
            [{"type": "missing", "loc": ["body", "password"], "msg": "Field required"}],
        ),
        (
            json.dumps({"password": PASSWORD}),
            [{"type": "missing", "loc": ["body", "username"], "msg": "Field required"}],
        ),
        (
            json.dumps({"username": 7, "password": PASSWORD}),
            [
                {
                    "type": "string_type",
                    "loc": ["body", "username"],
                    "msg": "Input should be a valid string",
                }
            ],
        ),
        ("", [{"type": "missing", "loc": ["body"], "msg": "Field required"}]),
        (
            '{"username": ',
            [{"type": "json_invalid", "loc": ["body", 13], "msg": "JSON decode error"}],
        ),
    ],
)
async def test_malformed_token_request_is_a_fastapi_422(
    http: httpx.AsyncClient, content: str, detail: list[dict[str, Any]]
) -> None:
    response = await http.post(
        "/auth/token", content=content, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json() == {"detail": detail}


async def test_a_422_never_echoes_the_input(http: httpx.AsyncClient) -> None:
    response = await http.post("/auth/token", json={"username": USERNAME, "password": 12345678})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "password"]
    assert "12345678" not in response.text


async def test_token_ttl_can_be_changed_at_runtime(http: httpx.AsyncClient) -> None:
    await _configure(http, tokenTtlS=5)

    response = await http.post("/auth/token", json={"username": USERNAME, "password": PASSWORD})

    assert response.json()["expires_in"] == 5


# --- POST /send-email: accepted ---------------------------------------------------------------


async def test_send_is_accepted_with_a_message_id(http: httpx.AsyncClient) -> None:
    response = await _send(http, await _token(http))

    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"message_id", "status"}
    assert MESSAGE_ID.match(body["message_id"])
    assert body["status"] == "queued"


async def test_limits_are_inclusive(http: httpx.AsyncClient) -> None:
    payload = _email(subject="s" * 255, body="b" * 10_000)

    response = await _send(http, await _token(http), payload)

    assert response.status_code == 202, response.text
    [record] = (await _messages(http))["data"]
    assert (len(record["subject"]), len(record["body"])) == (255, 10_000)


# --- POST /send-email: 400 and 422 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"to": "not-an-email"}, "Invalid email address format"),
        ({"to": "bob@localhost"}, "Invalid email address format"),
        ({"to": "bob@@example.com"}, "Invalid email address format"),
        ({"to": ""}, "Invalid email address format"),
        ({"subject": ""}, "Subject cannot be empty"),
        ({"subject": "   "}, "Subject cannot be empty"),
        ({"subject": "s" * 256}, "Subject exceeds maximum length of 255 characters"),
        ({"body": ""}, "Email body cannot be empty"),
        ({"body": "b" * 10_001}, "Email body exceeds maximum length of 10000 characters"),
    ],
)
async def test_invalid_payload_is_400_with_the_contract_detail(
    http: httpx.AsyncClient, overrides: dict[str, Any], detail: str
) -> None:
    response = await _send(http, await _token(http), _email(**overrides))

    assert response.status_code == 400
    assert response.json() == {"detail": detail}
    stats = await _stats(http)
    assert (stats["accepted"], stats["rejected"]) == (0, {"400": 1})
    assert (await _messages(http))["total"] == 0


async def test_a_400_takes_no_rate_limit_slot(http: httpx.AsyncClient) -> None:
    token = await _token(http)

    assert (await _send(http, token, _email(to="nope"))).status_code == 400
    assert (await _send(http, token)).status_code == 202


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (
            {"to": "alice@example.com", "subject": "hi"},
            [{"type": "missing", "loc": ["body", "body"], "msg": "Field required"}],
        ),
        (
            {"to": ["alice@example.com"], "subject": "hi", "body": "b"},
            [
                {
                    "type": "string_type",
                    "loc": ["body", "to"],
                    "msg": "Input should be a valid string",
                }
            ],
        ),
    ],
)
async def test_missing_or_mistyped_field_is_a_fastapi_422(
    http: httpx.AsyncClient, payload: dict[str, Any], detail: list[dict[str, Any]]
) -> None:
    response = await _send(http, await _token(http), payload)

    assert response.status_code == 422
    assert response.json() == {"detail": detail}
    assert (await _stats(http))["rejected"] == {"422": 1}


# --- POST /send-email: 401 --------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic bWFpbGVyOnM="},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Bearer a.b.c"},
    ],
)
async def test_missing_or_malformed_token_is_401(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await http.post("/send-email", json=_email(), headers=headers)

    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token"}
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_missing_token_is_401_before_the_body_is_checked(http: httpx.AsyncClient) -> None:
    response = await http.post("/send-email", json={})

    assert (response.status_code, response.json()) == (401, {"detail": "Invalid token"})


async def test_a_token_of_another_process_is_401(http: httpx.AsyncClient, clock: FakeClock) -> None:
    other = EmailApiMock(_email_settings(), clock=clock)
    async with _client(create_app(_settings(), email_api=other)) as other_http:
        foreign = await _token(other_http)

    assert (await _send(http, foreign)).status_code == 401


async def test_a_tampered_token_is_401(http: httpx.AsyncClient) -> None:
    token = await _token(http)
    header, _, signature = token.split(".")
    claims = _claims(token)
    claims["exp"] += 3600
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()

    assert (await _send(http, f"{header}.{forged}.{signature}")).status_code == 401


async def test_the_scheme_is_case_insensitive(http: httpx.AsyncClient) -> None:
    token = await _token(http)

    response = await http.post(
        "/send-email", json=_email(), headers={"authorization": f"bearer {token}"}
    )

    assert response.status_code == 202


async def test_a_token_expires_after_its_ttl(http: httpx.AsyncClient, clock: FakeClock) -> None:
    token = await _token(http)

    clock.now += TTL_S - 0.001
    assert (await _send(http, token)).status_code == 202
    clock.now += 0.001
    expired = await _send(http, token)

    assert (expired.status_code, expired.json()) == (401, {"detail": "Invalid token"})


async def test_a_fresh_token_works_after_expiry(http: httpx.AsyncClient, clock: FakeClock) -> None:
    token = await _token(http)
    clock.now += TTL_S

    assert (await _send(http, token)).status_code == 401
    assert (await _send(http, await _token(http))).status_code == 202


async def test_revoke_tokens_invalidates_every_issued_token(http: httpx.AsyncClient) -> None:
    first, second = await _token(http), await _token(http)

    config = await _configure(http, revokeTokens=True)

    assert "revokeTokens" not in config
    for token in (first, second):
        response = await _send(http, token)
        assert (response.status_code, response.json()) == (401, {"detail": "Invalid token"})
    assert (await _send(http, await _token(http))).status_code == 202


# --- POST /send-email: 429 --------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after_until_the_window_moves(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    token = await _token(http)
    assert (await _send(http, token)).status_code == 202

    clock.now += 3.5
    limited = await _send(http, token)
    assert limited.status_code == 429
    assert limited.json() == {"detail": RATE_DETAIL}
    assert limited.headers["retry-after"] == "7"  # ceil(6.5)

    clock.now += 6.49
    assert (await _send(http, token)).headers["retry-after"] == "1"

    clock.now += 0.01
    assert (await _send(http, token)).status_code == 202
    stats = await _stats(http)
    assert (stats["accepted"], stats["rateLimited"], stats["rejected"]) == (2, 2, {"429": 2})
    assert stats["maxObservedPerWindow"] == 1


async def test_rate_limit_is_a_sliding_window(http: httpx.AsyncClient, clock: FakeClock) -> None:
    await _configure(http, rateLimitPerWindow=3, rateWindowS=2)
    token = await _token(http)
    for _ in range(3):
        assert (await _send(http, token)).status_code == 202
        clock.now += 0.5

    limited = await _send(http, token)  # at 1.5 s: three sends in (-0.5, 1.5]
    assert limited.status_code == 429
    assert limited.json() == {"detail": "Rate limit exceeded. Maximum 3 requests per 2 seconds."}
    assert limited.headers["retry-after"] == "1"

    clock.now += 0.5  # the first send leaves the window
    assert (await _send(http, token)).status_code == 202
    assert (await _send(http, token)).status_code == 429
    assert (await _stats(http))["maxObservedPerWindow"] == 3


async def test_rate_limit_zero_is_unlimited_and_still_observed(http: httpx.AsyncClient) -> None:
    await _configure(http, rateLimitPerWindow=0)
    token = await _token(http)

    codes = [
        (await _send(http, token, _email(to=f"u{i}@example.com"))).status_code for i in range(5)
    ]

    assert codes == [202] * 5
    stats = await _stats(http)
    assert (stats["rateLimited"], stats["maxObservedPerWindow"]) == (0, 5)


async def test_max_observed_per_window_stays_at_the_limit_when_sends_are_paced(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    await _configure(http, rateLimitPerWindow=0)
    token = await _token(http)
    for i in range(4):
        assert (await _send(http, token, _email(to=f"u{i}@example.com"))).status_code == 202
        clock.now += WINDOW_S

    assert (await _stats(http))["maxObservedPerWindow"] == 1


# --- simulated failures and delay -------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(SIMULATED_DETAILS))
async def test_fail_next_answers_the_chosen_status_then_recovers(
    http: httpx.AsyncClient, status: int
) -> None:
    token = await _token(http)
    assert (await _configure(http, failNext=2, failStatus=status))["failNext"] == 2

    first, second = await _send(http, token), await _send(http, token)
    recovered = await _send(http, token)

    for response in (first, second):
        assert response.status_code == status
        assert response.json() == {"detail": SIMULATED_DETAILS[status]}
        assert ("retry-after" in response.headers) == (status == 429)
    if status == 429:
        assert first.headers["retry-after"] == "10"
    assert recovered.status_code == 202  # a simulated failure takes no rate-limit slot
    stats = await _stats(http)
    assert (stats["simulatedFailures"], stats["rejected"], stats["rateLimited"]) == (
        2,
        {str(status): 2},
        0,
    )
    config = (await http.get("/_mock/config")).json()
    assert (config["failNext"], config["failStatus"]) == (0, status)


async def test_fail_next_needs_a_valid_token(http: httpx.AsyncClient) -> None:
    await _configure(http, failNext=1, failStatus=503)

    assert (await http.post("/send-email", json=_email())).status_code == 401
    assert (await _send(http, await _token(http))).status_code == 503


async def test_delay_holds_the_answer(http: httpx.AsyncClient) -> None:
    await _configure(http, delayMs=50)
    token = await _token(http)

    started = time.monotonic()
    response = await _send(http, token)

    assert response.status_code == 202
    assert time.monotonic() - started >= 0.05


async def test_a_delayed_send_is_decided_on_arrival(http: httpx.AsyncClient) -> None:
    await _configure(http, delayMs=60_000)
    token = await _token(http)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_send(http, token), timeout=0.2)

    assert (await _messages(http))["total"] == 1  # the client gave up; the email was accepted


# --- the record: messages and stats -----------------------------------------------------------


async def test_messages_record_every_accepted_email_per_recipient(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    token = await _token(http)
    sent: list[str] = []
    for to, secret in (
        ("alice@example.com", "tok-a"),
        ("bob@example.com", "tok-b"),
        ("alice@example.com", "tok-c"),
    ):
        response = await _send(http, token, _email(to=to, body=f"Your token: {secret}"))
        sent.append(response.json()["message_id"])
        clock.now += WINDOW_S
    await _send(http, token, _email(to="broken"))

    everything = await _messages(http)
    alice = await _messages(http, to="ALICE@example.com")

    assert everything["total"] == 3
    assert [m["messageId"] for m in everything["data"]] == sent
    assert alice["total"] == 2
    assert [m["body"] for m in alice["data"]] == ["Your token: tok-a", "Your token: tok-c"]
    record = alice["data"][0]
    assert set(record) == {"messageId", "to", "subject", "body", "acceptedAt", "idempotencyKey"}
    assert (record["to"], record["subject"]) == ("alice@example.com", "Welcome")
    assert record["acceptedAt"].endswith("Z")
    assert (await _messages(http, to="carol@example.com")) == {"data": [], "total": 0}
    stats = await _stats(http)
    assert {k: stats[k] for k in ("received", "accepted", "rejected")} == {
        "received": 4,
        "accepted": 3,
        "rejected": {"400": 1},
    }


async def test_messages_are_capped_oldest_first(clock: FakeClock) -> None:
    mock = EmailApiMock(_email_settings(max_messages=2, rate_limit_per_window=0), clock=clock)
    async with _client(create_app(_settings(), email_api=mock)) as http:
        token = await _token(http)
        for i in range(3):
            assert (await _send(http, token, _email(to=f"u{i}@example.com"))).status_code == 202

        messages = await _messages(http)

        assert [m["to"] for m in messages["data"]] == ["u1@example.com", "u2@example.com"]
        assert (await _stats(http))["accepted"] == 3


async def test_delete_messages_resets_record_and_stats_but_keeps_config_and_tokens(
    http: httpx.AsyncClient,
) -> None:
    token = await _token(http)
    await _send(http, token)
    await _configure(http, failNext=1, failStatus=500, rateLimitPerWindow=5)

    response = await http.delete("/_mock/messages")

    assert response.status_code == 204
    assert (await _messages(http))["total"] == 0
    assert await _stats(http) == {
        "tokensIssued": 0,
        "tokenRequestsRejected": 0,
        "received": 0,
        "accepted": 0,
        "rejected": {},
        "rateLimited": 0,
        "simulatedFailures": 0,
        "maxObservedPerWindow": 0,
    }
    config = (await http.get("/_mock/config")).json()
    assert (config["failNext"], config["failStatus"], config["rateLimitPerWindow"]) == (1, 500, 5)
    assert (await _send(http, token)).status_code == 500
    assert (await _send(http, token)).status_code == 202


# --- /_mock/config ----------------------------------------------------------------------------


async def test_config_defaults_come_from_settings(http: httpx.AsyncClient) -> None:
    response = await http.get("/_mock/config")

    assert response.json() == {
        "failNext": 0,
        "failStatus": 503,
        "failureRate": 0.0,
        "delayMs": 0,
        "tokenTtlS": TTL_S,
        "rateLimitPerWindow": 1,
        "rateWindowS": WINDOW_S,
    }


async def test_config_post_merges_given_fields(http: httpx.AsyncClient) -> None:
    config = await _configure(http, rateWindowS=0.5, delayMs=10)

    assert (config["rateWindowS"], config["delayMs"], config["tokenTtlS"]) == (0.5, 10, TTL_S)
    assert (await http.get("/_mock/config")).json() == config


@pytest.mark.parametrize(
    "body",
    [
        {"failStatus": 404},
        {"failStatus": "teapot"},
        {"failNext": -1},
        {"failNext": "x"},
        {"delayMs": 60_001},
        {"tokenTtlS": 0},
        {"rateLimitPerWindow": -1},
        {"rateWindowS": 0},
        {"revokeTokens": "yes"},
        {"bogus": 1},
        [1],
    ],
)
async def test_config_rejects_bad_input(http: httpx.AsyncClient, body: object) -> None:
    before = (await http.get("/_mock/config")).json()

    response = await http.post("/_mock/config", json=body)

    assert response.status_code == 400, response.text
    assert (await http.get("/_mock/config")).json() == before


# --- the app around it ------------------------------------------------------------------------


async def test_health_follows_the_contract(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")

    body = response.json()
    assert response.status_code == 200
    assert set(body) == {"status", "timestamp", "version"}
    assert (body["status"], body["version"]) == ("healthy", "1.0.0")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", body["timestamp"])


async def test_metrics_count_sends_and_tokens(http: httpx.AsyncClient) -> None:
    token = await _token(http)
    await _send(http, token)
    await _send(http, token)
    await http.post("/auth/token", json={"username": USERNAME, "password": "wrong"})

    metrics = (await http.get("http://t/metrics")).text

    assert 'relaybox_mock_email_api_sends_total{outcome="accepted"}' in metrics
    assert 'relaybox_mock_email_api_sends_total{outcome="rate_limited"}' in metrics
    assert 'relaybox_mock_email_api_tokens_total{outcome="issued"}' in metrics
    assert 'relaybox_mock_email_api_tokens_total{outcome="invalid_credentials"}' in metrics


async def test_the_password_is_never_shown(http: httpx.AsyncClient) -> None:
    token = await _token(http)
    await _send(http, token)
    await http.post("/auth/token", json={"username": USERNAME, "password": PASSWORD + "x"})

    shown = [
        (await http.get(path)).text
        for path in ("/_mock/config", "/_mock/stats", "/_mock/messages", "/health")
    ]
    shown.append((await http.get("http://t/api/openapi.json")).text)
    shown.append((await http.get("http://t/metrics")).text)

    assert all(PASSWORD not in text for text in shown)
    assert PASSWORD not in json.dumps(_claims(token))
    assert PASSWORD not in repr(_settings())


async def test_the_contract_paths_are_in_the_openapi_schema(http: httpx.AsyncClient) -> None:
    schema = (await http.get("http://t/api/openapi.json")).json()

    paths = schema["paths"]
    assert {"/email-api/auth/token", "/email-api/send-email", "/email-api/health"} <= set(paths)
    assert paths["/email-api/send-email"]["post"]["security"] == [{"HTTPBearer": []}]


async def test_app_owns_an_email_api_made_from_settings() -> None:
    app = create_app(_settings(_email_settings(token_ttl_s=120)))
    assert isinstance(app.state.email_api_mock, EmailApiMock)

    async with _client(app) as http:
        token = (
            await http.post("/auth/token", json={"username": USERNAME, "password": PASSWORD})
        ).json()
        response = await _send(http, token["access_token"])

    assert token["expires_in"] == 120
    assert response.status_code == 202


# --- settings ---------------------------------------------------------------------------------


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "RELAYBOX_EMAIL_API__USERNAME": "env-user",
        "RELAYBOX_EMAIL_API__PASSWORD": "env-password",
        "RELAYBOX_EMAIL_API__TOKEN_TTL_S": "90",
        "RELAYBOX_EMAIL_API__RATE_LIMIT_PER_WINDOW": "3",
        "RELAYBOX_EMAIL_API__RATE_WINDOW_S": "2.5",
        "RELAYBOX_EMAIL_API__MAX_MESSAGES": "50",
    }.items():
        monkeypatch.setenv(name, value)

    email_api = MockMetaSettings().email_api

    assert (email_api.username, email_api.password) == ("env-user", "env-password")
    assert (email_api.token_ttl_s, email_api.rate_limit_per_window) == (90, 3)
    assert (email_api.rate_window_s, email_api.max_messages) == (2.5, 50)
    assert "env-password" not in repr(email_api)


def test_settings_defaults() -> None:
    email_api = EmailApiMockSettings()

    assert (email_api.username, email_api.password) == (
        DEV_EMAIL_API_USERNAME,
        DEV_EMAIL_API_PASSWORD,
    )
    assert (email_api.username, email_api.password) == ("relaybox", "dev-email-api-password")
    assert (email_api.token_ttl_s, email_api.rate_limit_per_window) == (1800, 1)
    assert (email_api.rate_window_s, email_api.max_messages) == (10.0, 10_000)
