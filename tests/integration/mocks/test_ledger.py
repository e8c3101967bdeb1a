"""The mock providers' call ledger (`GET /ledger`) and their random-failure switches.

The ledger counts every call per item key (SMTP Message-ID, email API `Idempotency-Key`, Meta
`clientMessageId`) and stamps each accepted one: what a chaos run reads from the providers' side.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any, cast

import aiosmtplib
import httpx
import pytest
from litestar import Litestar

from relaybox.mock_meta.app import create_app
from relaybox.mock_meta.email_api.mock import EmailApiMock
from relaybox.mock_meta.ledger import CallLedger
from relaybox.mock_meta.meta.mock import MetaMock
from relaybox.mock_meta.settings import (
    DEV_EMAIL_API_PASSWORD,
    DEV_EMAIL_API_USERNAME,
    EmailApiMockSettings,
    MetaMockSettings,
    MockMetaSettings,
    SmtpSinkSettings,
)
from relaybox.mock_meta.smtp.sink import SinkConfig, SmtpSink

MESSAGE = {"channel": "whatsapp", "to": "+15550001111", "text": "hello"}
EMAIL = {"to": "alice@example.com", "subject": "Welcome", "body": "hi"}


def _asgi(app: Litestar) -> httpx.ASGITransport:
    # httpx types the ASGI callable more narrowly than Litestar declares it
    return httpx.ASGITransport(app=cast("Any", app))


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    smtp_sink = SmtpSink(SmtpSinkSettings(port=0))
    await smtp_sink.start()
    yield smtp_sink
    await smtp_sink.stop()


@pytest.fixture
async def meta() -> AsyncIterator[MetaMock]:
    mock = MetaMock(MetaMockSettings(status_events=False, seed=3))
    await mock.start()
    yield mock
    await mock.stop()


@pytest.fixture
def email_api() -> EmailApiMock:
    return EmailApiMock(EmailApiMockSettings(rate_limit_per_window=0))


@pytest.fixture
async def http(
    sink: SmtpSink, meta: MetaMock, email_api: EmailApiMock
) -> AsyncIterator[httpx.AsyncClient]:
    # no app.lifespan(): the injected mocks already run (see test_smtp_sink.py)
    settings = MockMetaSettings(smtp_sink=SmtpSinkSettings(port=0))
    app = create_app(settings, sink=sink, meta=meta, email_api=email_api)
    async with httpx.AsyncClient(transport=_asgi(app), base_url="http://t") as client:
        yield client


async def _smtp(sink: SmtpSink, message_id: str) -> int:
    message = EmailMessage()
    message["From"] = "relaybox@localhost"
    message["To"] = "bob@example.com"
    message["Subject"] = "hi"
    message["Message-ID"] = f"<{message_id}>"
    message.set_content("body")
    try:
        await aiosmtplib.send(message, hostname=sink.host, port=sink.port, timeout=5)
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code
    return 250


async def _email_api_token(http: httpx.AsyncClient) -> dict[str, str]:
    credentials = {"username": DEV_EMAIL_API_USERNAME, "password": DEV_EMAIL_API_PASSWORD}
    response = await http.post("/email-api/auth/token", json=credentials)
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def _ledger(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/ledger")
    assert response.status_code == 200, response.text
    ledger: dict[str, Any] = response.json()
    return ledger


def test_call_ledger_counts_calls_and_stamps_acceptances() -> None:
    moments = iter([10.0, 11.5])
    ledger = CallLedger(clock=lambda: next(moments))
    ledger.record("a", accepted=False)
    ledger.record("a", accepted=True)
    ledger.record("b", accepted=True)
    ledger.record(None, accepted=True)
    view = ledger.view()
    ledger.record("a", accepted=False)  # a snapshot does not move

    assert {k: (e.calls, e.accepted_at) for k, e in view.entries.items()} == {
        "a": (2, [10.0]),
        "b": (1, [11.5]),
    }
    assert view.unkeyed_calls == 1
    ledger.clear()
    assert ledger.view().entries == {}


async def test_every_provider_call_is_in_the_ledger_by_item_key(
    http: httpx.AsyncClient, sink: SmtpSink, meta: MetaMock, email_api: EmailApiMock
) -> None:
    before = time.time()
    sink.configure(SinkConfig(fail_next=1))
    assert [await _smtp(sink, "e1@relaybox"), await _smtp(sink, "e1@relaybox")] == [451, 250]
    await http.post("/config", json={"failNext": 1, "failStatus": 503})
    for _ in range(2):
        await http.post("/messages", json={**MESSAGE, "clientMessageId": "m1"})
    await http.post("/messages", json=MESSAGE)  # no clientMessageId: unkeyed
    auth = await _email_api_token(http)
    for key in ("k1", "k1"):  # no de-duplication: both accepted
        sent = await http.post(
            "/email-api/send-email", json=EMAIL, headers={**auth, "Idempotency-Key": key}
        )
        assert sent.status_code == 202

    ledger = await _ledger(http)

    smtp, email, chat = ledger["smtp"], ledger["emailApi"], ledger["meta"]
    assert smtp["entries"]["e1@relaybox"]["calls"] == 2
    assert len(smtp["entries"]["e1@relaybox"]["acceptedAt"]) == 1
    assert chat["entries"]["m1"]["calls"] == 2
    assert len(chat["entries"]["m1"]["acceptedAt"]) == 1
    assert chat["unkeyedCalls"] == 1
    assert email["entries"]["k1"]["calls"] == 2
    assert all(before <= t <= time.time() for t in email["entries"]["k1"]["acceptedAt"])
    records = (await http.get("/email-api/_mock/messages")).json()["data"]
    assert [r["idempotencyKey"] for r in records] == ["k1", "k1"]


async def test_each_reset_clears_its_ledger(http: httpx.AsyncClient, sink: SmtpSink) -> None:
    await _smtp(sink, "e2@relaybox")
    await http.post("/messages", json={**MESSAGE, "clientMessageId": "m2"})
    auth = await _email_api_token(http)
    await http.post("/email-api/send-email", json=EMAIL, headers={**auth, "Idempotency-Key": "k"})

    for path in ("/smtp/messages", "/messages", "/email-api/_mock/messages"):
        assert (await http.delete(path)).status_code == 204

    ledger = await _ledger(http)
    assert all(not ledger[name]["entries"] for name in ("smtp", "emailApi", "meta"))


async def test_smtp_failure_rate_answers_the_failure_kind(
    http: httpx.AsyncClient, sink: SmtpSink
) -> None:
    config = await http.post("/smtp/config", json={"failureRate": 1})
    assert config.json()["failureRate"] == 1
    assert {await _smtp(sink, f"r{i}@relaybox") for i in range(3)} == {451}

    await http.post("/smtp/config", json={"failureRate": 0})
    assert await _smtp(sink, "ok@relaybox") == 250
    assert (await http.post("/smtp/config", json={"failureRate": 2})).status_code == 400


async def test_email_api_failure_rate_answers_5xx(http: httpx.AsyncClient) -> None:
    auth = await _email_api_token(http)
    config = await http.post("/email-api/_mock/config", json={"failureRate": 1})
    assert config.json()["failureRate"] == 1
    statuses = {
        (await http.post("/email-api/send-email", json=EMAIL, headers=auth)).status_code
        for _ in range(20)
    }
    assert statuses <= {500, 502, 503}

    await http.post("/email-api/_mock/config", json={"failureRate": 0})
    assert (await http.post("/email-api/send-email", json=EMAIL, headers=auth)).status_code == 202
    stats = (await http.get("/email-api/_mock/stats")).json()
    assert stats["simulatedFailures"] == 20


async def test_meta_failure_statuses_choose_what_a_random_failure_answers(
    http: httpx.AsyncClient,
) -> None:
    config = await http.post("/config", json={"failureRate": 1, "failureStatuses": [503, 500]})
    assert config.json()["failureStatuses"] == [503, 500]
    statuses = {(await http.post("/messages", json=MESSAGE)).status_code for _ in range(20)}
    assert statuses <= {500, 503}

    assert (await http.post("/config", json={"failureStatuses": []})).status_code == 400
    default = (await http.get("/config")).json()["failureStatuses"]
    assert default == [503, 500]
