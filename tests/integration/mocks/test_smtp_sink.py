"""Integration tests of the mock-meta SMTP sink: real SMTP over TCP and its HTTP routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any, cast

import aiosmtplib
import httpx
import pytest
from litestar import Litestar

from relaybox.mock_meta.app import create_app
from relaybox.mock_meta.settings import MockMetaSettings, SmtpSinkSettings
from relaybox.mock_meta.smtp.sink import SinkConfig, SmtpSink


def _settings(max_messages: int = 100) -> MockMetaSettings:
    return MockMetaSettings(smtp_sink=SmtpSinkSettings(port=0, max_messages=max_messages))


def _email(to: str = "alice@example.com", subject: str = "hello", msg_id: str = "") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Relaybox <noreply@relaybox.test>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = msg_id or f"<{subject}.{to}@relaybox.test>"
    message.set_content("plain body")
    message.add_alternative("<p>html body</p>", subtype="html")
    return message


async def _send(sink: SmtpSink, message: EmailMessage) -> tuple[dict[str, Any], str]:
    return await aiosmtplib.send(message, hostname=sink.host, port=sink.port, timeout=5)


def _asgi(app: Litestar) -> httpx.ASGITransport:
    # httpx types the ASGI callable more narrowly than Litestar declares it
    return httpx.ASGITransport(app=cast("Any", app))


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    smtp_sink = SmtpSink(_settings().smtp_sink)
    await smtp_sink.start()
    yield smtp_sink
    await smtp_sink.stop()


@pytest.fixture
async def http(sink: SmtpSink) -> AsyncIterator[httpx.AsyncClient]:
    # no app.lifespan() here: the injected sink already runs, and an anyio task group entered
    # in an async fixture would be exited from another task
    app = create_app(_settings(), sink=sink)
    async with httpx.AsyncClient(transport=_asgi(app), base_url="http://t") as client:
        yield client


async def test_accepted_message_is_stored(sink: SmtpSink) -> None:
    _, reply = await _send(sink, _email(msg_id="<abc-1@relaybox.test>"))

    assert "queued as 1" in reply
    [stored] = sink.store.find()
    assert stored.id == 1
    assert stored.message_id == "<abc-1@relaybox.test>"
    assert stored.from_ == "noreply@relaybox.test"
    assert stored.to == ["alice@example.com"]
    assert stored.subject == "hello"
    assert stored.text is not None
    assert stored.text.strip() == "plain body"
    assert stored.html is not None
    assert "<p>html body</p>" in stored.html
    assert stored.size > 0
    assert sink.stats.accepted == 1


@pytest.mark.parametrize(
    ("mode", "code"), [pytest.param("transient", 451), pytest.param("permanent", 550)]
)
async def test_failure_mode_rejects_every_message(sink: SmtpSink, mode: str, code: int) -> None:
    sink.configure(SinkConfig(mode=mode))  # type: ignore[arg-type]

    for _ in range(2):
        with pytest.raises(aiosmtplib.SMTPResponseException) as caught:
            await _send(sink, _email())
        assert caught.value.code == code

    assert len(sink.store) == 0
    stats = sink.stats
    assert stats.accepted == 0
    assert (stats.rejected_transient, stats.rejected_permanent) == (
        (2, 0) if mode == "transient" else (0, 2)
    )


async def test_fail_next_then_accepts(sink: SmtpSink) -> None:
    sink.configure(SinkConfig(fail_next=1, failure="permanent"))

    with pytest.raises(aiosmtplib.SMTPResponseException) as caught:
        await _send(sink, _email(subject="first"))
    assert caught.value.code == 550
    await _send(sink, _email(subject="second"))

    assert [m.subject for m in sink.store.find()] == ["second"]
    assert sink.config == SinkConfig(fail_next=0, failure="permanent")
    assert (sink.stats.accepted, sink.stats.rejected_permanent) == (1, 1)


async def test_ring_buffer_drops_oldest() -> None:
    small = SmtpSink(SmtpSinkSettings(port=0, max_messages=2))
    await small.start()
    try:
        for subject in ("one", "two", "three"):
            await _send(small, _email(subject=subject))
    finally:
        await small.stop()

    assert [(m.id, m.subject) for m in small.store.find()] == [(2, "two"), (3, "three")]
    assert not small.running


async def test_health(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_list_filter_and_get_messages(sink: SmtpSink, http: httpx.AsyncClient) -> None:
    await _send(sink, _email(to="alice@example.com", msg_id="<m1@relaybox.test>"))
    await _send(sink, _email(to="bob@example.com", msg_id="<m2@relaybox.test>"))

    everything = (await http.get("/smtp/messages")).json()
    by_to = (await http.get("/smtp/messages", params={"to": "BOB@example.com"})).json()
    by_id = (await http.get("/smtp/messages", params={"messageId": "m1@relaybox.test"})).json()
    one = await http.get("/smtp/messages/2")
    raw = await http.get("/smtp/messages/2/raw")
    missing = await http.get("/smtp/messages/99")

    assert everything["total"] == 2
    assert [m["to"] for m in by_to["data"]] == [["bob@example.com"]]
    assert by_to["total"] == 1
    assert [m["messageId"] for m in by_id["data"]] == ["<m1@relaybox.test>"]
    assert one.status_code == 200
    body = one.json()
    assert set(body) == {
        "id",
        "messageId",
        "from",
        "to",
        "subject",
        "text",
        "html",
        "receivedAt",
        "size",
    }
    assert (body["id"], body["messageId"], body["from"]) == (
        2,
        "<m2@relaybox.test>",
        "noreply@relaybox.test",
    )
    assert raw.status_code == 200
    assert b"Message-ID: <m2@relaybox.test>" in raw.content
    assert missing.status_code == 404


async def test_config_routes_steer_the_sink(sink: SmtpSink, http: httpx.AsyncClient) -> None:
    assert (await http.get("/smtp/config")).json() == {
        "mode": "accept",
        "failNext": 0,
        "failure": "transient",
        "failureRate": 0.0,
    }

    posted = await http.post("/smtp/config", json={"failNext": 1, "failure": "transient"})
    assert posted.status_code == 200
    assert posted.json() == {
        "mode": "accept",
        "failNext": 1,
        "failure": "transient",
        "failureRate": 0.0,
    }
    with pytest.raises(aiosmtplib.SMTPResponseException) as caught:
        await _send(sink, _email())
    assert caught.value.code == 451
    await _send(sink, _email())

    stats = (await http.get("/smtp/stats")).json()
    assert stats == {"accepted": 1, "rejectedTransient": 1, "rejectedPermanent": 0, "stored": 1}
    assert (await http.get("/smtp/config")).json()["failNext"] == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"mode": "bounce"}, id="unknown-mode"),
        pytest.param({"failNext": -1}, id="negative-fail-next"),
        pytest.param({"failNext": "two"}, id="fail-next-not-int"),
        pytest.param({"failure": "accept"}, id="unknown-failure"),
        pytest.param({"fail_next": 1}, id="unknown-field"),
        pytest.param([], id="not-an-object"),
    ],
)
async def test_config_rejects_bad_input(
    sink: SmtpSink, http: httpx.AsyncClient, body: object
) -> None:
    response = await http.post("/smtp/config", json=body)

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert sink.config == SinkConfig()


async def test_delete_clears_messages_and_stats(sink: SmtpSink, http: httpx.AsyncClient) -> None:
    await _send(sink, _email())

    response = await http.delete("/smtp/messages")

    assert response.status_code == 204
    assert (await http.get("/smtp/messages")).json() == {"data": [], "total": 0}
    assert (await http.get("/smtp/stats")).json()["accepted"] == 0
    _, reply = await _send(sink, _email())
    assert "queued as 2" in reply  # ids keep increasing after a clear


async def test_app_owns_the_sink_it_creates() -> None:
    app = create_app(_settings())
    sink: SmtpSink = app.state.smtp_sink

    async with app.lifespan():
        assert sink.running
        await _send(sink, _email(msg_id="<owned@relaybox.test>"))
        transport = _asgi(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            found = await client.get(
                "/smtp/messages", params={"messageId": "<owned@relaybox.test>"}
            )
        assert found.json()["total"] == 1

    assert not sink.running


async def test_injected_running_sink_survives_app_shutdown(sink: SmtpSink) -> None:
    app = create_app(_settings(), sink=sink)

    async with app.lifespan():
        assert sink.running

    assert sink.running
    await _send(sink, _email())


async def test_stop_drops_open_connections() -> None:
    sink = SmtpSink(SmtpSinkSettings(port=0))
    await sink.start()
    client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, timeout=5)
    await client.connect()
    await client.ehlo()

    await sink.stop()

    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await client.noop()
    client.close()
    assert not sink.running
