"""Integration tests of the Meta-like mock provider: its HTTP API and its signed webhooks.

The mock runs in-process (ASGI transport); its webhooks go over real HTTP to a small Litestar
receiver served by uvicorn in the test's event loop. Randomness is pinned with seeds, rates of
0 or 1 and `failNext`; background deliveries are awaited with `MetaMock.drain()`, never slept on.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import httpx
import msgspec
import pytest
import uvicorn
from litestar import Litestar, Request, Response, post

from relaybox.common.observability.server import EmbeddedServer
from relaybox.common.signing import DEV_WEBHOOK_SECRET, SIGNATURE_HEADER, verify
from relaybox.mock_meta.app import create_app
from relaybox.mock_meta.meta.mock import MetaMock
from relaybox.mock_meta.settings import (
    MetaMockSettings,
    MockMetaSettings,
    SmtpSinkSettings,
)

SECRET = "test-webhook-secret"
PROVIDER_ID = re.compile(r"^msg_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
EVENT_ID = re.compile(r"^evt_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TRANSIENT = {429, 500, 502, 503, 504}
STATUS_KEYS = {"eventId", "type", "channel", "providerMessageId", "status", "timestamp"}
INBOUND_KEYS = {"eventId", "type", "channel", "from", "text", "timestamp"}


# --- the webhook receiver ---------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One webhook POST as the receiver saw it."""

    path: str
    body: bytes
    headers: dict[str, str]

    @property
    def json(self) -> dict[str, Any]:
        decoded: dict[str, Any] = msgspec.json.decode(self.body)
        return decoded

    @property
    def signed(self) -> bool:
        return verify(SECRET, self.body, self.headers.get(SIGNATURE_HEADER.lower()))


@dataclass
class Receiver:
    """Records every POST; answers 500 to the next `fail_next` of them."""

    port: int = 0
    fail_next: int = 0
    deliveries: list[Delivery] = field(default_factory=list)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def accepted(self) -> list[Delivery]:
        """Deliveries answered with 200, in arrival order."""
        return [d for d in self.deliveries if d.headers.get("x-test-answer") == "200"]

    def app(self) -> Litestar:
        @post("/{path:path}", status_code=200)
        async def hook(request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
            body = await request.body()
            failing = self.fail_next > 0
            self.fail_next -= 1 if failing else 0
            headers = {k.lower(): v for k, v in request.headers.items()}
            headers["x-test-answer"] = "500" if failing else "200"
            self.deliveries.append(Delivery(request.url.path, body, headers))
            status = 500 if failing else 200
            return Response({"status": "failed" if failing else "ok"}, status_code=status)

        return Litestar([hook], openapi_config=None, logging_config=None)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recorder = Receiver()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections queue from now on: no startup race
    recorder.port = sock.getsockname()[1]
    config = uvicorn.Config(
        recorder.app(),
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        ws="none",
        http="h11",
    )
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield recorder
    server.should_exit = True
    await task
    sock.close()


# --- the mock under test ----------------------------------------------------------------------


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _meta_settings(receiver: Receiver, **overrides: Any) -> MetaMockSettings:
    values: dict[str, Any] = {
        "webhook_url": receiver.url(),
        "webhook_secret": SECRET,
        "webhook_timeout_s": 5.0,
        "webhook_backoff_s": 0.01,
        "delay_max_ms": 0,
        "seed": 7,
    }
    values.update(overrides)
    return MetaMockSettings(**values)


def _settings(meta: MetaMockSettings | None = None) -> MockMetaSettings:
    return MockMetaSettings(
        smtp_sink=SmtpSinkSettings(port=0), meta=meta if meta is not None else MetaMockSettings()
    )


def _asgi(app: Litestar) -> httpx.ASGITransport:
    # httpx types the ASGI callable more narrowly than Litestar declares it
    return httpx.ASGITransport(app=cast("Any", app))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def meta(receiver: Receiver, clock: FakeClock) -> AsyncIterator[MetaMock]:
    mock = MetaMock(_meta_settings(receiver), clock=clock)
    await mock.start()
    yield mock
    await mock.stop()


@pytest.fixture
async def http(meta: MetaMock) -> AsyncIterator[httpx.AsyncClient]:
    # no app.lifespan() here: the injected mock already runs (see test_smtp_sink.py)
    app = create_app(_settings(), meta=meta)
    async with httpx.AsyncClient(transport=_asgi(app), base_url="http://t") as client:
        yield client


def _message(client_message_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"channel": "whatsapp", "to": "+15550001111", "text": "hello"}
    if client_message_id is not None:
        body["clientMessageId"] = client_message_id
    body.update(overrides)
    return body


async def _configure(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await http.post("/config", json=fields)
    assert response.status_code == 200, response.text
    config: dict[str, Any] = response.json()
    return config


async def _stats(http: httpx.AsyncClient) -> dict[str, Any]:
    stats: dict[str, Any] = (await http.get("/stats")).json()
    return stats


def _utc(timestamp: str) -> datetime:
    moment = datetime.fromisoformat(timestamp)
    assert moment.utcoffset() is not None
    assert moment.utcoffset() == UTC.utcoffset(None)
    return moment


# --- POST /messages ---------------------------------------------------------------------------


async def test_send_answers_with_a_provider_message_id(
    http: httpx.AsyncClient, meta: MetaMock
) -> None:
    response = await http.post("/messages", json=_message("c-1", channel="instagram"))

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"success", "providerMessageId", "timestamp"}
    assert body["success"] is True
    assert PROVIDER_ID.match(body["providerMessageId"])
    _utc(body["timestamp"])

    await meta.drain()
    recorded = (await http.get(f"/messages/{body['providerMessageId']}")).json()
    assert {k: v for k, v in recorded.items() if k != "statuses"} == {
        "providerMessageId": body["providerMessageId"],
        "channel": "instagram",
        "to": "+15550001111",
        "text": "hello",
        "clientMessageId": "c-1",
        "timestamp": body["timestamp"],
    }
    assert [s["status"] for s in recorded["statuses"]] == ["sent", "delivered", "read"]
    assert (await http.get("/messages/msg_unknown")).status_code == 404


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param({"channel": "whatsapp", "text": "hi"}, "missing field `to`", id="no-to"),
        pytest.param({"to": "1", "text": "hi"}, "missing field `channel`", id="no-channel"),
        pytest.param({"channel": "whatsapp", "to": "1"}, "missing field `text`", id="no-text"),
        pytest.param(_message(text=""), "`text` must not be empty", id="empty-text"),
        pytest.param(_message(text="  "), "`text` must not be empty", id="blank-text"),
        pytest.param(_message(channel="sms"), "unknown channel 'sms'", id="unknown-channel"),
        pytest.param(_message(text=5), "text: Expected `str | null`", id="text-not-a-string"),
        pytest.param([], "must be a JSON object", id="not-an-object"),
    ],
)
async def test_bad_send_is_a_permanent_400(
    http: httpx.AsyncClient, receiver: Receiver, meta: MetaMock, body: object, error: str
) -> None:
    response = await http.post("/messages", json=body)

    assert response.status_code == 400
    answer = response.json()
    assert answer["success"] is False
    assert answer["retryable"] is False
    assert error in answer["error"]
    stats = await _stats(http)
    assert (stats["received"], stats["failed"], stats["accepted"]) == (1, 1, 0)
    await meta.drain()
    assert receiver.deliveries == []


async def test_malformed_json_is_a_400_in_the_provider_shape(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/messages", content=b"{not json", headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["retryable"] is False
    assert (await _stats(http))["received"] == 1


async def test_fail_next_503_twice_then_accepts(http: httpx.AsyncClient) -> None:
    config = await _configure(http, failNext=2, failStatus=503)
    assert (config["failNext"], config["failStatus"]) == (2, 503)

    answers = [await http.post("/messages", json=_message("c-1")) for _ in range(3)]

    assert [a.status_code for a in answers] == [503, 503, 200]
    for failed in answers[:2]:
        assert failed.json() == {
            "success": False,
            "error": "service unavailable (simulated)",
            "retryable": True,
        }
        assert "retry-after" not in failed.headers
    assert (await http.get("/config")).json()["failNext"] == 0
    stats = await _stats(http)
    assert (stats["received"], stats["failed"], stats["accepted"]) == (3, 2, 1)
    assert stats["byClientMessageId"] == {"c-1": 3}


async def test_fail_next_429_carries_retry_after(http: httpx.AsyncClient) -> None:
    await _configure(http, failNext=1, failStatus=429)

    response = await http.post("/messages", json=_message())

    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["retryable"] is True


async def test_fail_next_400_is_permanent_and_comes_before_the_failure_rate(
    http: httpx.AsyncClient,
) -> None:
    await _configure(http, failNext=1, failStatus=400, failureRate=1.0)

    first = await http.post("/messages", json=_message())
    second = await http.post("/messages", json=_message())

    assert first.status_code == 400
    assert first.json()["retryable"] is False
    assert second.status_code in TRANSIENT


async def test_failure_rate_one_always_fails_zero_never(http: httpx.AsyncClient) -> None:
    await _configure(http, failureRate=1.0)
    failing = [await http.post("/messages", json=_message()) for _ in range(20)]
    await _configure(http, failureRate=0)
    passing = [await http.post("/messages", json=_message()) for _ in range(20)]

    assert {r.status_code for r in failing} <= TRANSIENT
    for response in failing:
        assert response.json()["success"] is False
        assert response.json()["retryable"] is True
        assert ("retry-after" in response.headers) == (response.status_code == 429)
    assert {r.status_code for r in passing} == {200}
    stats = await _stats(http)
    assert (stats["received"], stats["failed"], stats["accepted"]) == (40, 20, 20)


async def test_a_seed_replays_the_same_failures(http: httpx.AsyncClient) -> None:
    async def run() -> list[int]:
        await _configure(http, seed=1234, failureRate=0.5, statusEvents=False)
        return [(await http.post("/messages", json=_message())).status_code for _ in range(30)]

    first, second = await run(), await run()

    assert first == second
    assert 200 in first
    assert set(first) - {200}  # some failures too


async def test_rate_limit_answers_429_until_the_window_moves(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    await _configure(http, rateLimitPerSecond=2)

    burst = [await http.post("/messages", json=_message("r")) for _ in range(3)]
    clock.now += 0.5
    still_limited = await http.post("/messages", json=_message("r"))
    clock.now += 0.5
    after_window = await http.post("/messages", json=_message("r"))

    assert [r.status_code for r in burst] == [200, 200, 429]
    assert burst[2].headers["retry-after"] == "1"
    assert burst[2].json() == {
        "success": False,
        "error": "rate limit exceeded",
        "retryable": True,
    }
    assert still_limited.status_code == 429
    assert after_window.status_code == 200
    stats = await _stats(http)
    assert (stats["received"], stats["accepted"], stats["rateLimited"]) == (5, 3, 2)
    assert stats["byClientMessageId"] == {"r": 5}


async def test_rate_limit_zero_is_unlimited(http: httpx.AsyncClient) -> None:
    await _configure(http, rateLimitPerSecond=0, statusEvents=False)

    answers = [await http.post("/messages", json=_message()) for _ in range(30)]

    assert {r.status_code for r in answers} == {200}


# --- stats and de-duplication -----------------------------------------------------------------


async def test_stats_count_every_arrival_without_dedupe(
    http: httpx.AsyncClient, meta: MetaMock, receiver: Receiver
) -> None:
    await _configure(http, failNext=1)
    answers = [await http.post("/messages", json=_message(cid)) for cid in ("a", "a", "a", "b")]
    await http.post("/messages", json=_message())  # no clientMessageId

    assert [r.status_code for r in answers] == [503, 200, 200, 200]
    ids = [r.json()["providerMessageId"] for r in answers[1:]]
    assert len(set(ids)) == 3  # without dedupe every send is a new message
    await meta.drain()
    assert await _stats(http) == {
        "received": 5,
        "accepted": 4,
        "deduplicated": 0,
        "failed": 1,
        "rateLimited": 0,
        "byClientMessageId": {"a": 3, "b": 1},
        "webhooksSent": 12,
        "webhooksFailed": 0,
        "webhookRetries": 0,
    }
    assert len(receiver.deliveries) == 12


async def test_dedupe_returns_the_original_message(
    http: httpx.AsyncClient, meta: MetaMock, receiver: Receiver
) -> None:
    await _configure(http, dedupe=True)

    first = (await http.post("/messages", json=_message("same"))).json()
    again = (await http.post("/messages", json=_message("same", text="changed"))).json()
    other = (await http.post("/messages", json=_message("other"))).json()

    assert again == first
    assert other["providerMessageId"] != first["providerMessageId"]
    await meta.drain()
    stats = await _stats(http)
    assert (stats["received"], stats["accepted"], stats["deduplicated"]) == (3, 2, 1)
    assert stats["byClientMessageId"] == {"same": 2, "other": 1}
    sent_for = [d.json["providerMessageId"] for d in receiver.deliveries]
    assert sorted(sent_for) == sorted(
        [first["providerMessageId"]] * 3 + [other["providerMessageId"]] * 3
    )
    recorded = (await http.get(f"/messages/{first['providerMessageId']}")).json()
    assert recorded["text"] == "hello"


async def test_delete_messages_resets_stats_but_keeps_config(
    http: httpx.AsyncClient, meta: MetaMock
) -> None:
    await _configure(http, dedupe=True, statusEvents=False)
    sent = (await http.post("/messages", json=_message("x"))).json()

    assert (await http.delete("/messages")).status_code == 204

    assert (await _stats(http))["received"] == 0
    assert (await http.get(f"/messages/{sent['providerMessageId']}")).status_code == 404
    assert (await http.get("/config")).json()["dedupe"] is True
    again = (await http.post("/messages", json=_message("x"))).json()
    assert again["providerMessageId"] != sent["providerMessageId"]


# --- status webhooks --------------------------------------------------------------------------


async def test_status_events_are_posted_in_order_and_signed(
    http: httpx.AsyncClient, meta: MetaMock, receiver: Receiver
) -> None:
    sent = (await http.post("/messages", json=_message("s-1"))).json()
    await meta.drain()

    assert len(receiver.deliveries) == 3
    for delivery in receiver.deliveries:
        assert delivery.path == "/hook"
        assert delivery.signed
        assert delivery.headers["content-type"] == "application/json"
    events = [d.json for d in receiver.deliveries]
    for event in events:
        assert set(event) == STATUS_KEYS
        assert EVENT_ID.match(event["eventId"])
        assert (event["type"], event["channel"]) == ("status", "whatsapp")
        assert event["providerMessageId"] == sent["providerMessageId"]
    assert [e["status"] for e in events] == ["sent", "delivered", "read"]
    moments = [_utc(e["timestamp"]) for e in events]
    assert _utc(sent["timestamp"]) <= moments[0] < moments[1] < moments[2]
    assert len({e["eventId"] for e in events}) == 3
    recorded = (await http.get(f"/messages/{sent['providerMessageId']}")).json()
    assert recorded["statuses"] == [
        {"status": e["status"], "eventId": e["eventId"], "timestamp": e["timestamp"]}
        for e in events
    ]
    assert (await _stats(http))["webhooksSent"] == 3


async def test_status_events_can_be_switched_off(
    http: httpx.AsyncClient, meta: MetaMock, receiver: Receiver
) -> None:
    await _configure(http, statusEvents=False)

    sent = (await http.post("/messages", json=_message())).json()
    await meta.drain()

    assert receiver.deliveries == []
    assert (await http.get(f"/messages/{sent['providerMessageId']}")).json()["statuses"] == []


async def test_out_of_order_posts_a_later_status_first(
    http: httpx.AsyncClient, meta: MetaMock, receiver: Receiver
) -> None:
    await _configure(http, outOfOrderRate=1.0)

    await http.post("/messages", json=_message())
    await meta.drain()

    events = [d.json for d in receiver.deliveries]
    assert [e["status"] for e in events] == ["delivered", "sent", "read"]
    by_status = {e["status"]: _utc(e["timestamp"]) for e in events}
    assert by_status["sent"] < by_status["delivered"] < by_status["read"]


async def test_duplicate_rate_reposts_identical_events(
    http: httpx.AsyncClient, meta: MetaMock, receiver: Receiver
) -> None:
    await _configure(http, duplicateRate=1.0, seed=99)

    await http.post("/messages", json=_message())
    await meta.drain()

    bodies: dict[str, set[bytes]] = {}
    counts: dict[str, int] = {}
    for delivery in receiver.deliveries:
        assert delivery.signed
        event_id = delivery.json["eventId"]
        bodies.setdefault(event_id, set()).add(delivery.body)
        counts[event_id] = counts.get(event_id, 0) + 1
    assert len(counts) == 3
    assert set(counts.values()) <= {2, 3}  # re-posted once, sometimes twice
    assert all(len(variants) == 1 for variants in bodies.values())  # byte-identical re-posts
    first_seen = list(dict.fromkeys(d.json["status"] for d in receiver.deliveries))
    assert first_seen == ["sent", "delivered", "read"]
    assert (await _stats(http))["webhooksSent"] == len(receiver.deliveries)


async def test_a_refused_webhook_is_retried(
    http: httpx.AsyncClient, meta: MetaMock, receiver: Receiver
) -> None:
    receiver.fail_next = 2

    await http.post("/messages", json=_message())
    await meta.drain()

    assert len(receiver.deliveries) == 5
    assert [d.json["status"] for d in receiver.accepted] == ["sent", "delivered", "read"]
    assert {d.json["status"] for d in receiver.deliveries[:3]} == {"sent"}
    stats = await _stats(http)
    assert (stats["webhooksSent"], stats["webhooksFailed"], stats["webhookRetries"]) == (3, 0, 2)


async def test_a_webhook_that_keeps_failing_is_counted(receiver: Receiver) -> None:
    receiver.fail_next = 100
    mock = MetaMock(_meta_settings(receiver, webhook_attempts=2))
    await mock.start()
    app = create_app(_settings(), meta=mock)
    try:
        async with httpx.AsyncClient(transport=_asgi(app), base_url="http://t") as client:
            await client.post("/messages", json=_message())
            await mock.drain()
            stats = await _stats(client)
    finally:
        await mock.stop()

    assert len(receiver.deliveries) == 6
    assert (stats["webhooksSent"], stats["webhooksFailed"], stats["webhookRetries"]) == (0, 3, 3)


# --- POST /simulate/inbound -------------------------------------------------------------------


async def test_inbound_event_is_posted_signed(http: httpx.AsyncClient, receiver: Receiver) -> None:
    response = await http.post(
        "/simulate/inbound",
        json={"channel": "instagram", "from": "user-1", "text": "hi there", "wait": True},
    )

    assert response.status_code == 200
    answer = response.json()
    assert answer == {
        "success": True,
        "eventId": answer["eventId"],
        "timestamp": answer["timestamp"],
        "simulation": {
            "duplicate": False,
            "outOfOrder": False,
            "duplicates": 0,
            "laterEventId": None,
        },
    }
    assert EVENT_ID.match(answer["eventId"])
    _utc(answer["timestamp"])
    [delivery] = receiver.deliveries
    assert delivery.signed
    assert delivery.headers["content-type"] == "application/json"
    assert set(delivery.json) == INBOUND_KEYS
    assert delivery.json == {
        "eventId": answer["eventId"],
        "type": "message",
        "channel": "instagram",
        "from": "user-1",
        "text": "hi there",
        "timestamp": answer["timestamp"],
    }


async def test_inbound_keeps_given_id_and_timestamp_and_honours_webhook_url(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    answer = (
        await http.post(
            "/simulate/inbound",
            json={
                "eventId": "evt_given",
                "channel": "whatsapp",
                "from": "+1555",
                "text": "hey",
                "timestamp": "2024-05-01T10:00:00Z",
                "webhookUrl": receiver.url("/other"),
                "wait": True,
            },
        )
    ).json()

    assert (answer["eventId"], answer["timestamp"]) == ("evt_given", "2024-05-01T10:00:00Z")
    [delivery] = receiver.deliveries
    assert delivery.path == "/other"
    assert delivery.json["eventId"] == "evt_given"
    assert delivery.json["timestamp"] == "2024-05-01T10:00:00Z"


async def test_inbound_duplicate_reposts_the_same_event(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    answer = (
        await http.post(
            "/simulate/inbound",
            json={
                "channel": "whatsapp",
                "from": "u",
                "text": "dup",
                "duplicate": True,
                "wait": True,
            },
        )
    ).json()

    duplicates = answer["simulation"]["duplicates"]
    assert duplicates in (1, 2)
    assert answer["simulation"]["duplicate"] is True
    assert len(receiver.deliveries) == 1 + duplicates
    assert len({d.body for d in receiver.deliveries}) == 1
    assert receiver.deliveries[0].json["eventId"] == answer["eventId"]
    assert all(d.signed for d in receiver.deliveries)


async def test_inbound_out_of_order_posts_a_later_event_first(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    answer = (
        await http.post(
            "/simulate/inbound",
            json={
                "channel": "whatsapp",
                "from": "u",
                "text": "first",
                "outOfOrder": True,
                "wait": True,
            },
        )
    ).json()

    later, real = (d.json for d in receiver.deliveries)
    assert len(receiver.deliveries) == 2
    assert real["eventId"] == answer["eventId"]
    assert real["text"] == "first"
    assert later["eventId"] == answer["simulation"]["laterEventId"] != answer["eventId"]
    assert later["text"] == "(later) first"
    assert _utc(later["timestamp"]) > _utc(real["timestamp"])
    assert set(later) == INBOUND_KEYS


async def test_inbound_duplicate_and_out_of_order_together(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    answer = (
        await http.post(
            "/simulate/inbound",
            json={
                "channel": "whatsapp",
                "from": "u",
                "text": "both",
                "duplicate": True,
                "outOfOrder": True,
                "wait": True,
            },
        )
    ).json()

    ids = [d.json["eventId"] for d in receiver.deliveries]
    assert ids[0] == answer["simulation"]["laterEventId"]
    assert ids[1:] == [answer["eventId"]] * (1 + answer["simulation"]["duplicates"])


async def test_inbound_without_wait_runs_in_the_background(
    http: httpx.AsyncClient, meta: MetaMock, receiver: Receiver
) -> None:
    answer = (
        await http.post("/simulate/inbound", json={"channel": "whatsapp", "from": "u", "text": "x"})
    ).json()
    await meta.drain()

    assert answer["success"] is True
    assert [d.json["eventId"] for d in receiver.deliveries] == [answer["eventId"]]


async def test_inbound_with_wait_reports_a_failed_delivery(receiver: Receiver) -> None:
    receiver.fail_next = 100
    mock = MetaMock(_meta_settings(receiver, webhook_attempts=1))
    await mock.start()
    app = create_app(_settings(), meta=mock)
    try:
        async with httpx.AsyncClient(transport=_asgi(app), base_url="http://t") as client:
            answer = (
                await client.post(
                    "/simulate/inbound",
                    json={"channel": "whatsapp", "from": "u", "text": "x", "wait": True},
                )
            ).json()
            stats = await _stats(client)
    finally:
        await mock.stop()

    assert answer["success"] is False
    assert stats["webhooksFailed"] == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"channel": "sms", "from": "u", "text": "x"}, id="unknown-channel"),
        pytest.param({"channel": "whatsapp", "text": "x"}, id="no-from"),
        pytest.param({"channel": "whatsapp", "from": "u", "text": ""}, id="empty-text"),
        pytest.param(
            {"channel": "whatsapp", "from": "u", "text": "x", "timestamp": "yesterday"},
            id="bad-timestamp",
        ),
        pytest.param(
            {"channel": "whatsapp", "from": "u", "text": "x", "webhookUrl": "ftp://x"},
            id="bad-webhook-url",
        ),
        pytest.param({"channel": "whatsapp", "from": "u", "text": "x", "dup": 1}, id="unknown"),
    ],
)
async def test_inbound_rejects_bad_input(
    http: httpx.AsyncClient, receiver: Receiver, body: dict[str, Any]
) -> None:
    response = await http.post("/simulate/inbound", json=body)

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert receiver.deliveries == []


# --- /config ----------------------------------------------------------------------------------


async def test_config_defaults_come_from_settings(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    assert (await http.get("/config")).json() == {
        "failureRate": 0.0,
        "failureStatuses": sorted(TRANSIENT),
        "duplicateRate": 0.0,
        "outOfOrderRate": 0.0,
        "delayMaxMs": 0,
        "rateLimitPerSecond": 0,
        "seed": 7,
        "dedupe": False,
        "statusEvents": True,
        "failNext": 0,
        "failStatus": 503,
        "webhookUrl": receiver.url(),
    }


async def test_config_post_merges_given_fields(http: httpx.AsyncClient) -> None:
    before = (await http.get("/config")).json()

    after = await _configure(http, failureRate=0.25, dedupe=True, webhookUrl="https://gw.test/h")

    assert after == {
        **before,
        "failureRate": 0.25,
        "dedupe": True,
        "webhookUrl": "https://gw.test/h",
    }
    assert (await http.get("/config")).json() == after


async def test_config_null_seed_picks_a_random_one(http: httpx.AsyncClient) -> None:
    config = await _configure(http, seed=None)

    assert isinstance(config["seed"], int)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"failureRate": 1.5}, id="rate-above-one"),
        pytest.param({"failureRate": -0.1}, id="rate-below-zero"),
        pytest.param({"failureRate": "often"}, id="rate-not-a-number"),
        pytest.param({"duplicateRate": 2}, id="duplicate-rate"),
        pytest.param({"outOfOrderRate": -1}, id="out-of-order-rate"),
        pytest.param({"delayMaxMs": -1}, id="negative-delay"),
        pytest.param({"rateLimitPerSecond": -1}, id="negative-rate-limit"),
        pytest.param({"failNext": -1}, id="negative-fail-next"),
        pytest.param({"failStatus": 200}, id="fail-status-not-an-error"),
        pytest.param({"seed": "abc"}, id="seed-not-an-int"),
        pytest.param({"dedupe": "yes"}, id="dedupe-not-a-bool"),
        pytest.param({"webhookUrl": "ftp://gw"}, id="webhook-url-not-http"),
        pytest.param({"fail_next": 1}, id="unknown-field"),
        pytest.param([], id="not-an-object"),
    ],
)
async def test_config_rejects_bad_input(http: httpx.AsyncClient, body: object) -> None:
    before = (await http.get("/config")).json()

    response = await http.post("/config", json=body)

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert (await http.get("/config")).json() == before


# --- the app around it ------------------------------------------------------------------------


async def test_health_and_metrics(http: httpx.AsyncClient) -> None:
    await http.post("/messages", json=_message())

    health = await http.get("/health")
    metrics = await http.get("/metrics")

    assert health.json() == {"status": "ok"}
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'relaybox_mock_meta_sends_total{outcome="accepted"}' in metrics.text
    assert "relaybox_mock_meta_webhooks_total" in metrics.text


async def test_app_owns_the_mock_it_creates(receiver: Receiver) -> None:
    app = create_app(_settings(_meta_settings(receiver, delay_max_ms=60_000, seed=5)))
    mock: MetaMock = app.state.meta_mock

    async with app.lifespan():
        assert mock.running
        async with httpx.AsyncClient(transport=_asgi(app), base_url="http://t") as client:
            assert (await client.post("/messages", json=_message())).status_code == 200
        assert mock.pending == 1  # the status events wait out their (seeded, long) delay

    assert not mock.running
    assert mock.pending == 0  # cancelled on shutdown
    assert receiver.deliveries == []


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "RELAYBOX_META__WEBHOOK_URL": "http://gateway:3000/webhooks/mock-meta",
        "RELAYBOX_META__WEBHOOK_SECRET": "from-env",
        "RELAYBOX_META__WEBHOOK_TIMEOUT_S": "2.5",
        "RELAYBOX_META__FAILURE_RATE": "0.1",
        "RELAYBOX_META__DUPLICATE_RATE": "0.2",
        "RELAYBOX_META__OUT_OF_ORDER_RATE": "0.3",
        "RELAYBOX_META__RATE_LIMIT_PER_SECOND": "80",
        "RELAYBOX_META__SEED": "42",
    }.items():
        monkeypatch.setenv(name, value)

    meta = MockMetaSettings().meta

    assert meta.webhook_url == "http://gateway:3000/webhooks/mock-meta"
    assert meta.webhook_secret == "from-env"
    assert meta.webhook_timeout_s == 2.5
    assert (meta.failure_rate, meta.duplicate_rate, meta.out_of_order_rate) == (0.1, 0.2, 0.3)
    assert (meta.rate_limit_per_second, meta.seed) == (80, 42)
    assert "from-env" not in repr(meta)


def test_settings_defaults() -> None:
    meta = MetaMockSettings()

    assert meta.webhook_url == "http://127.0.0.1:3000/webhooks/mock-meta"
    assert meta.webhook_secret == DEV_WEBHOOK_SECRET
    assert (meta.failure_rate, meta.duplicate_rate, meta.out_of_order_rate) == (0, 0, 0)
    assert (meta.rate_limit_per_second, meta.seed, meta.dedupe, meta.status_events) == (
        0,
        None,
        False,
        True,
    )
