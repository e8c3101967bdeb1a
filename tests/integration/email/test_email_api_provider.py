"""The email HTTP API provider against the mock of the contract, over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.consumer.providers.base import OutgoingEmail, PermanentError, RetryableError
from relaybox.consumer.providers.email_api import (
    TOKEN_REFRESH_FAILURES,
    EmailApiProvider,
    EmailApiSettings,
)
from relaybox.mock_meta.app import create_app as create_mock
from relaybox.mock_meta.settings import MockMetaSettings, SmtpSinkSettings
from relaybox.mock_meta.smtp.sink import SmtpSink
from tests.support.pipeline import (
    consumer_settings,
    publisher_settings,
    running_pipeline,
    wait_final,
)
from tests.support.serving import serve_app


def email(n: int = 1, to: str = "dana@example.com") -> OutgoingEmail:
    return OutgoingEmail(id=f"e-{n}", to=to, from_="r@example.com", subject=f"#{n}", text="hello")


@pytest.fixture
async def mock_url() -> AsyncIterator[str]:
    """mock-meta with its email API, served on a loopback port; unlimited rate unless set."""
    settings = MockMetaSettings(smtp_sink=SmtpSinkSettings(port=0))
    async with serve_app(create_mock(settings)) as url:
        await control(url, rateLimitPerWindow=0)
        yield f"{url}/email-api"


async def control(base: str, **config: Any) -> None:
    url = base if base.endswith("/email-api") else f"{base}/email-api"
    async with httpx.AsyncClient() as client:
        (await client.post(f"{url}/_mock/config", json=config)).raise_for_status()


async def stats(base: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        found: dict[str, Any] = (await client.get(f"{base}/_mock/stats")).json()
        return found


@pytest.fixture
async def provider(mock_url: str) -> AsyncIterator[EmailApiProvider]:
    api = EmailApiProvider(EmailApiSettings(base_url=mock_url, timeout_s=2))
    yield api
    await api.close()


async def test_sends_and_reuses_one_token(provider: EmailApiProvider, mock_url: str) -> None:
    ids = [await provider.send(email(n)) for n in range(3)]
    assert all(i is not None and i.startswith("msg_") for i in ids)
    counters = await stats(mock_url)
    assert counters["accepted"] == 3
    assert counters["tokensIssued"] == 1


async def test_prepare_fetches_the_token_ahead_of_the_send(
    provider: EmailApiProvider, mock_url: str
) -> None:
    await provider.prepare()
    assert (await stats(mock_url))["tokensIssued"] == 1
    await provider.send(email())  # no token request between the slot and the send
    counters = await stats(mock_url)
    assert (counters["tokensIssued"], counters["accepted"]) == (1, 1)


async def test_prepare_leaves_a_token_failure_to_the_send(mock_url: str) -> None:
    api = EmailApiProvider(EmailApiSettings(base_url=mock_url, password=SecretStr("wrong-pw")))
    refused = TOKEN_REFRESH_FAILURES.labels("refused")
    before = refused._value.get()
    try:
        await api.prepare()  # does not raise: the send reports it, classified
        with pytest.raises(RetryableError, match="refused the token request"):
            await api.send(email())
    finally:
        await api.close()
    assert refused._value.get() == before + 2  # counted for the alert: prepare's, the send's


async def test_concurrent_sends_share_one_refresh(
    provider: EmailApiProvider, mock_url: str
) -> None:
    await asyncio.gather(*(provider.send(email(n)) for n in range(20)))
    assert (await stats(mock_url))["tokensIssued"] == 1


async def test_a_revoked_token_is_refreshed_once_and_the_send_goes_through(
    provider: EmailApiProvider, mock_url: str
) -> None:
    await provider.send(email(1))
    await control(mock_url, revokeTokens=True)
    assert (await provider.send(email(2)) or "").startswith("msg_")
    assert (await stats(mock_url))["tokensIssued"] == 2


async def test_the_token_is_refreshed_before_it_expires(mock_url: str) -> None:
    await control(mock_url, tokenTtlS=30)
    api = EmailApiProvider(EmailApiSettings(base_url=mock_url, refresh_margin_s=60))
    try:  # a 30 s token is always inside the 60 s margin: every send refreshes first
        for n in range(3):
            await api.send(email(n))
    finally:
        await api.close()
    counters = await stats(mock_url)
    assert counters["tokensIssued"] == 3
    assert counters["rejected"].get("401", 0) == 0


@pytest.mark.parametrize(
    ("status", "error", "retry_after"),
    [
        (400, PermanentError, None),
        (429, RetryableError, 10.0),
        (500, RetryableError, None),
        (502, RetryableError, None),
        (503, RetryableError, None),
    ],
)
async def test_errors_are_classified(
    provider: EmailApiProvider,
    mock_url: str,
    status: int,
    error: type[Exception],
    retry_after: float | None,
) -> None:
    await control(mock_url, failNext=1, failStatus=status)
    with pytest.raises(error) as raised:
        await provider.send(email())
    assert f"HTTP {status}" in str(raised.value)
    if retry_after is not None:
        assert isinstance(raised.value, RetryableError)
        assert raised.value.retry_after == retry_after


async def test_an_invalid_address_is_permanent_with_the_api_detail(
    provider: EmailApiProvider,
) -> None:
    with pytest.raises(PermanentError, match="Invalid email address format"):
        await provider.send(email(to="not-an-address"))


async def test_a_slow_api_is_a_retryable_timeout(mock_url: str) -> None:
    await control(mock_url, delayMs=1500)
    api = EmailApiProvider(EmailApiSettings(base_url=mock_url, timeout_s=0.3))
    try:
        with pytest.raises(RetryableError, match="timed out"):
            await api.send(email())
    finally:
        await api.close()


async def test_wrong_credentials_never_leak_the_password(mock_url: str) -> None:
    secret = "hunter2-wrong-password"
    api = EmailApiProvider(EmailApiSettings(base_url=mock_url, password=SecretStr(secret)))
    try:
        with pytest.raises(RetryableError) as raised:
            await api.send(email())
    finally:
        await api.close()
    assert secret not in str(raised.value)
    assert "401" in str(raised.value)


async def test_single_sends_go_through_the_http_api_when_selected(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    mock_url: str,
) -> None:
    """RELAYBOX_EMAIL_PROVIDER=http-api: POST /send is delivered by the email API, not SMTP."""
    con = consumer_settings(
        db_settings,
        broker_settings,
        sink.port,
        email_provider="http-api",
        email_api=EmailApiSettings(base_url=mock_url, rate_per_second=50),
    )
    pub = publisher_settings(db_settings, broker_settings)
    async with running_pipeline(engine, topology, pub, con):
        response = await client.post(
            "/send", json={"to": "erin@example.com", "subject": "Via API", "text": "hello"}
        )
        assert response.status_code == 202
        assert await wait_final(engine, 1) == {response.json()["id"]: "SENT"}
    async with httpx.AsyncClient() as http:
        accepted = (await http.get(f"{mock_url}/_mock/messages")).json()
    assert [m["to"] for m in accepted["data"]] == ["erin@example.com"]
    assert not sink.store.find()


async def test_a_429_storm_never_fails_an_email(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    mock_url: str,
) -> None:
    """More 429s in a row than max_attempts: flow control, so the email is still sent."""
    # Retry-After of a simulated 429 is the mock's window: 1 s here (its default is 10 s).
    await control(mock_url, failNext=5, failStatus=429, rateWindowS=1.0)
    con = consumer_settings(
        db_settings,
        broker_settings,
        sink.port,
        email_provider="http-api",
        email_api=EmailApiSettings(base_url=mock_url, rate_per_second=50),
    )
    pub = publisher_settings(db_settings, broker_settings)
    async with running_pipeline(engine, topology, pub, con):
        response = await client.post(
            "/send", json={"to": "storm@example.com", "subject": "429s", "text": "hello"}
        )
        assert await wait_final(engine, 1, timeout=90) == {response.json()["id"]: "SENT"}
    counters = await stats(mock_url)
    assert counters["rejected"]["429"] == 5
    assert counters["accepted"] == 1
