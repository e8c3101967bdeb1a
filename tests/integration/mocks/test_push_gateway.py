"""Integration tests of the FCM-like push gateway mock (docs/messenger/push-gateway.md).

The mock-meta app is served over real HTTP (its lifespan starts and stops the injected push
mock); receipts go over real HTTP to a scripted receiver that stamps each arrival. Randomness is
pinned with seeds, rates of 0 or 1 and `failNext`; the rate window runs on a fake clock; owed
receipts are awaited with `PushMock.drain()`. Latency is only ever checked as a lower bound.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from relaybox.common.signing import DEV_PUSH_SERVER_KEY, SIGNATURE_HEADER, verify
from relaybox.mock_meta.app import create_app
from relaybox.mock_meta.meta.state import Clock
from relaybox.mock_meta.push.mock import PushMock
from relaybox.mock_meta.push.models import MAX_LATENCY_MS, Exponential, LogNormal, Uniform
from relaybox.mock_meta.push.network import draw_ms
from relaybox.mock_meta.settings import MockMetaSettings, PushMockSettings, SmtpSinkSettings
from tests.support.scripted import Answer, Call, Receive, ScriptedProvider, Send
from tests.support.serving import serve_app

SECRET = "test-push-receipt-secret"
AUTH = {"Authorization": f"Bearer {DEV_PUSH_SERVER_KEY}"}
NAME = re.compile(r"^projects/relaybox-mock/messages/[0-9a-f]{32}$")
CLOCK_SLACK_S = 0.005  # wall-clock vs monotonic granularity, never a timing allowance
OK = Answer.json(200, {"status": "ok"})
FAILED = Answer.json(500, {"status": "failed"})


def _unregistered(code: str = "UNREGISTERED") -> dict[str, Any]:
    return {
        "error": {
            "code": 404,
            "message": "Requested entity was not found.",
            "status": "NOT_FOUND",
            "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
            ],
        }
    }


# --- the receipt receiver -----------------------------------------------------------------------


@dataclass
class Receiver:
    """A scripted webhook endpoint (200 unless scripted) that stamps each POST's arrival."""

    provider: ScriptedProvider = field(default_factory=lambda: ScriptedProvider(default=OK))
    arrivals: list[float] = field(default_factory=list)
    url: str = ""

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.arrivals.append(time.time())
        await self.provider(scope, receive, send)

    @property
    def calls(self) -> list[Call]:
        return self.provider.calls

    def receipts(self) -> list[dict[str, Any]]:
        """Every receipt of every POST, in arrival order."""
        return [receipt for call in self.calls for receipt in call.json()["receipts"]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recorder = Receiver()
    async with serve_app(recorder) as base_url:
        recorder.url = f"{base_url}/webhooks/push"
        yield recorder


# --- the gateway under test ---------------------------------------------------------------------


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Gateway:
    """The push mock in a served mock-meta app, and a client of that app."""

    mock: PushMock
    http: httpx.AsyncClient

    async def send(
        self, token: str, key: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        data = {"messageId": key or "m", "recipient": "bob", "seq": "1"}
        sent_headers = dict(AUTH if headers is None else headers)
        if key is not None:
            sent_headers["Idempotency-Key"] = key
        message = {"message": {"token": token, "data": data, "notification": {"title": "hi"}}}
        return await self.http.post("/push/v1/messages:send", json=message, headers=sent_headers)

    async def configure(self, **fields: Any) -> dict[str, Any]:
        response = await self.http.post("/push/_mock/config", json=fields)
        assert response.status_code == 200, response.text
        config: dict[str, Any] = response.json()
        return config

    async def records(self, token: str | None = None) -> list[dict[str, Any]]:
        params = {} if token is None else {"token": token}
        response = await self.http.get("/push/_mock/messages", params=params)
        found: list[dict[str, Any]] = response.json()["data"]
        return found

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = (await self.http.get("/push/_mock/stats")).json()
        return stats


@asynccontextmanager
async def running(
    receiver: Receiver, clock: Clock = time.time, **overrides: Any
) -> AsyncIterator[Gateway]:
    values: dict[str, Any] = {
        "receipt_url": receiver.url,
        "webhook_secret": SECRET,
        "webhook_backoff_s": 0.01,
        "seed": 7,
    }
    values.update(overrides)
    push = PushMock(PushMockSettings(**values), clock=clock)
    app = create_app(MockMetaSettings(smtp_sink=SmtpSinkSettings(port=0)), push=push)
    async with serve_app(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        yield Gateway(push, http)


@pytest.fixture
async def gateway(receiver: Receiver) -> AsyncIterator[Gateway]:
    async with running(receiver) as started:
        yield started


def _held(gateway: Gateway, token: str) -> bool:
    """Whether the device's one push waits for an offline window's end. A receipt task without
    latency takes that step before the send's answer reaches the client (one event loop)."""
    return [r.receipt for r in gateway.mock.state.records(token)] == ["offline"]


# --- the send -----------------------------------------------------------------------------------


async def test_send_answers_a_name_and_a_signed_receipt_follows(
    gateway: Gateway, receiver: Receiver
) -> None:
    response = await gateway.send("phone-1", key="m1:d1")

    assert response.status_code == 200
    assert set(response.json()) == {"name"}
    name = response.json()["name"]
    assert NAME.match(name)
    await gateway.mock.drain()
    [call] = receiver.calls
    assert call.path == "/webhooks/push"
    assert verify(SECRET, call.body, call.headers[SIGNATURE_HEADER.lower()])
    assert not verify("another-secret", call.body, call.headers[SIGNATURE_HEADER.lower()])
    [receipt] = call.json()["receipts"]
    assert set(receipt) == {"id", "name", "token", "data", "deliveredAt"}
    assert (receipt["name"], receipt["token"]) == (name, "phone-1")
    assert receipt["data"] == {"messageId": "m1:d1", "recipient": "bob", "seq": "1"}
    assert receipt["deliveredAt"].endswith("Z")
    [record] = await gateway.records()
    assert (record["status"], record["outcome"], record["receipt"]) == (200, "accepted", "sent")
    assert (record["name"], record["receiptId"], record["idempotencyKey"]) == (
        name,
        receipt["id"],
        "m1:d1",
    )
    assert record["receiptAttempts"] == 1
    stats = await gateway.stats()
    assert (stats["received"], stats["accepted"], stats["receiptsSent"]) == (1, 1, 1)


async def test_the_ledger_counts_every_call_per_idempotency_key(gateway: Gateway) -> None:
    await gateway.configure(failNext=1)
    answers = [(await gateway.send("phone-1", key="m1:d1")).status_code for _ in range(3)]
    await gateway.send("phone-1")  # no key: unkeyed

    assert answers == [503, 200, 200]  # no de-duplication: a device got m1 twice
    ledger = (await gateway.http.get("/ledger")).json()["push"]
    assert ledger["entries"]["m1:d1"]["calls"] == 3
    assert len(ledger["entries"]["m1:d1"]["acceptedAt"]) == 2
    assert ledger["unkeyedCalls"] == 1
    assert (await gateway.http.delete("/push/_mock/messages")).status_code == 204
    assert (await gateway.http.get("/ledger")).json()["push"]["entries"] == {}
    assert await gateway.records() == []


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer not-the-key"}, id="wrong-key"),
        pytest.param({"Authorization": DEV_PUSH_SERVER_KEY}, id="not-bearer"),
    ],
)
async def test_a_bad_server_key_is_401_unauthenticated(
    gateway: Gateway, receiver: Receiver, headers: dict[str, str]
) -> None:
    response = await gateway.send("phone-1", headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")
    assert "details" not in error
    assert DEV_PUSH_SERVER_KEY not in response.text
    await gateway.mock.drain()
    assert receiver.calls == []
    assert (await gateway.records())[0]["outcome"] == "unauthenticated"


@pytest.mark.parametrize(
    ("token", "config"),
    [
        pytest.param("dead-4f2a", {}, id="dead-prefix"),
        pytest.param("stale-token", {"unregisteredTokens": ["stale-token"]}, id="listed"),
        pytest.param("old-phone", {"devices": {"old-phone": {"unregistered": True}}}, id="device"),
    ],
)
async def test_an_unregistered_token_is_404_unregistered(
    gateway: Gateway, receiver: Receiver, token: str, config: dict[str, Any]
) -> None:
    await gateway.configure(**config)

    response = await gateway.send(token)
    alive = await gateway.send("alive-token")

    assert response.status_code == 404
    assert response.json() == _unregistered()
    assert alive.status_code == 200
    await gateway.mock.drain()
    assert [r["token"] for r in receiver.receipts()] == ["alive-token"]
    stats = await gateway.stats()
    assert (stats["unregistered"], stats["rejected"]) == (1, {"404": 1})


async def test_a_malformed_send_is_400_invalid_argument(gateway: Gateway) -> None:
    bad = [
        await gateway.http.post("/push/v1/messages:send", content=b"{", headers=AUTH),
        await gateway.http.post(
            "/push/v1/messages:send",
            json={"message": {"token": "t", "data": {"n": 1}}},
            headers=AUTH,
        ),
        await gateway.send(""),
        await gateway.http.post(
            "/push/v1/messages:send",
            json={"message": {"token": "t", "data": {"blob": "x" * 5000}}},
            headers=AUTH,
        ),
    ]

    for response in bad:
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["status"], error["details"][0]["errorCode"]) == (
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        )


# --- storms and the rate limit ------------------------------------------------------------------


async def test_a_429_storm_answers_resource_exhausted_with_retry_after(gateway: Gateway) -> None:
    config = await gateway.configure(failNext=2, failStatus=429, retryAfterS=7)
    assert (config["failNext"], config["failStatus"]) == (2, 429)

    answers = [await gateway.send("phone-1") for _ in range(3)]

    assert [a.status_code for a in answers] == [429, 429, 200]
    for storm in answers[:2]:
        assert storm.headers["retry-after"] == "7"
        error = storm.json()["error"]
        assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
        assert error["details"][0]["errorCode"] == "QUOTA_EXCEEDED"
    assert (await gateway.http.get("/push/_mock/config")).json()["failNext"] == 0
    stats = await gateway.stats()
    assert (stats["simulatedFailures"], stats["rejected"], stats["accepted"]) == (2, {"429": 2}, 1)


async def test_a_503_storm_at_a_rate_then_a_500_without_retry_after(gateway: Gateway) -> None:
    await gateway.configure(failureRate=1, failureStatuses=[503], retryAfterS=3)
    storm = [await gateway.send("phone-1") for _ in range(10)]
    await gateway.configure(failureRate=0, failNext=1, failStatus=500)
    internal = await gateway.send("phone-1")
    calm = await gateway.send("phone-1")

    assert {r.status_code for r in storm} == {503}
    for response in storm:
        assert response.headers["retry-after"] == "3"
        assert response.json()["error"]["status"] == "UNAVAILABLE"
    assert internal.status_code == 500
    assert internal.json()["error"]["status"] == "INTERNAL"
    assert "retry-after" not in internal.headers
    assert calm.status_code == 200


async def test_the_rate_limit_answers_429_until_the_second_passes(receiver: Receiver) -> None:
    clock = FakeClock()
    async with running(receiver, clock=clock, rate_limit_per_second=2) as gateway:
        burst = [await gateway.send("phone-1") for _ in range(3)]
        clock.now += 0.5
        still_limited = await gateway.send("phone-1")
        clock.now += 0.5
        after_window = await gateway.send("phone-1")
        stats = await gateway.stats()

    assert [r.status_code for r in burst] == [200, 200, 429]
    assert burst[2].headers["retry-after"] == "1"
    assert burst[2].json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert still_limited.status_code == 429
    assert after_window.status_code == 200
    assert (stats["received"], stats["accepted"], stats["rateLimited"]) == (5, 3, 2)


# --- loss, offline windows and latency ----------------------------------------------------------


async def test_loss_is_seeded_and_a_lost_push_gets_no_receipt(
    gateway: Gateway, receiver: Receiver
) -> None:
    async def run() -> list[str]:
        await gateway.http.delete("/push/_mock/messages")
        await gateway.configure(seed=42, loss=0.5)
        for index in range(20):
            assert (await gateway.send(f"phone-{index}")).status_code == 200
        return [r["token"] for r in await gateway.records() if r["receipt"] == "lost"]

    lost = await run()
    await gateway.mock.drain()
    delivered = [r["token"] for r in receiver.receipts()]
    stats = await gateway.stats()
    replayed = await run()

    assert 0 < len(lost) < 20
    assert replayed == lost  # the same seed loses exactly the same pushes
    assert stats["lost"] == len(lost)
    assert stats["receiptsSent"] == len(delivered) == 20 - len(lost)
    assert set(delivered) == {f"phone-{i}" for i in range(20)} - set(lost)


async def test_a_device_override_replaces_the_global_loss(
    gateway: Gateway, receiver: Receiver
) -> None:
    await gateway.configure(loss=1, devices={"lucky": {"loss": 0}})

    for token in ("lucky", "unlucky", "lucky"):
        await gateway.send(token)

    await gateway.mock.drain()
    assert [r["token"] for r in receiver.receipts()] == ["lucky", "lucky"]
    assert [r["receipt"] for r in await gateway.records("unlucky")] == ["lost"]


async def test_a_push_to_an_offline_device_is_delivered_when_it_comes_back(
    gateway: Gateway, receiver: Receiver
) -> None:
    await gateway.configure(devices={"phone": {"offline": [{}]}})  # offline until changed

    assert (await gateway.send("phone")).status_code == 200
    assert (await gateway.send("laptop")).status_code == 200
    assert _held(gateway, "phone")
    await asyncio.wait_for(receiver.provider.called.wait(), timeout=10)
    assert [r["token"] for r in receiver.receipts()] == ["laptop"]

    await gateway.configure(devices={})
    await gateway.mock.drain()

    assert [r["token"] for r in receiver.receipts()] == ["laptop", "phone"]
    assert [r["receipt"] for r in await gateway.records("phone")] == ["sent"]
    assert (await gateway.stats())["heldOffline"] == 1


async def test_an_offline_window_delivers_at_its_end(gateway: Gateway, receiver: Receiver) -> None:
    started = time.time()
    window = {"start": started - 1, "end": started + 60}
    await gateway.configure(devices={"phone": {"offline": [window]}})
    await gateway.send("phone")
    assert _held(gateway, "phone")

    end = time.time() + 0.3
    await gateway.configure(devices={"phone": {"offline": [{**window, "end": end}]}})
    await gateway.mock.drain()

    [arrival] = receiver.arrivals
    assert arrival >= end - CLOCK_SLACK_S
    [record] = await gateway.records("phone")
    assert record["deliveredAt"] >= end - CLOCK_SLACK_S
    assert record["receipt"] == "sent"


async def test_shutdown_cancels_the_receipts_still_owed(receiver: Receiver) -> None:
    async with running(receiver) as gateway:
        await gateway.configure(devices={"phone": {"offline": [{}]}})
        await gateway.send("phone")
        assert _held(gateway, "phone")

    assert gateway.mock.pending == 0
    assert not gateway.mock.running
    assert [r.receipt for r in gateway.mock.state.records()] == ["cancelled"]
    assert receiver.calls == []


async def test_latency_holds_back_the_answer_and_the_receipt(
    gateway: Gateway, receiver: Receiver
) -> None:
    await gateway.configure(
        answerLatency={"kind": "fixed", "ms": 300}, receiptLatency={"kind": "fixed", "ms": 400}
    )

    before = time.time()
    response = await gateway.send("phone")
    answered = time.time()
    await gateway.mock.drain()

    assert response.status_code == 200
    assert answered - before >= 0.3 - CLOCK_SLACK_S
    assert receiver.arrivals[0] - before >= 0.4 - CLOCK_SLACK_S
    [record] = await gateway.records()
    assert (record["answerDelayMs"], record["receiptDelayMs"]) == (300, 400)
    assert record["deliveredAt"] - record["receivedAt"] >= 0.4 - CLOCK_SLACK_S


async def test_per_device_receipt_latency_is_drawn_from_the_seed(
    gateway: Gateway, receiver: Receiver
) -> None:
    slow = {"kind": "uniform", "minMs": 50, "maxMs": 80}

    async def run() -> list[float]:
        await gateway.http.delete("/push/_mock/messages")
        await gateway.configure(seed=5, devices={"slow": {"receiptLatency": slow}})
        for _ in range(4):
            await gateway.send("slow")
        await gateway.send("fast")
        await gateway.mock.drain()
        records = await gateway.records()
        for record in records:
            assert record["deliveredAt"] - record["receivedAt"] >= (
                record["receiptDelayMs"] / 1000 - CLOCK_SLACK_S
            )
        return [r["receiptDelayMs"] for r in records]

    delays = await run()

    assert all(50 <= delay <= 80 for delay in delays[:4])
    assert len(set(delays[:4])) == 4
    assert delays[4] == 0
    assert await run() == delays
    assert len(receiver.receipts()) == 10


def test_latency_draws_stay_within_their_bounds() -> None:
    rng = random.Random(1)
    assert all(10 <= draw_ms(Uniform(min_ms=10, max_ms=20), rng) <= 20 for _ in range(100))
    assert all(draw_ms(Exponential(mean_ms=50), rng) >= 0 for _ in range(100))
    assert draw_ms(Exponential(mean_ms=0), rng) == 0
    huge = LogNormal(median_ms=MAX_LATENCY_MS, sigma=5)
    assert all(0 < draw_ms(huge, rng) <= MAX_LATENCY_MS for _ in range(100))


async def test_a_receipt_is_retried_on_a_500_with_the_same_body(
    gateway: Gateway, receiver: Receiver
) -> None:
    receiver.provider.script(FAILED, FAILED)

    await gateway.send("phone")
    await gateway.mock.drain()

    assert len(receiver.calls) == 3
    assert len({call.body for call in receiver.calls}) == 1  # same receipt id, same signature
    assert all(
        verify(SECRET, call.body, call.headers[SIGNATURE_HEADER.lower()]) for call in receiver.calls
    )
    [record] = await gateway.records()
    assert (record["receipt"], record["receiptAttempts"]) == ("sent", 3)
    stats = await gateway.stats()
    assert (stats["receiptsSent"], stats["receiptRetries"], stats["receiptsFailed"]) == (1, 2, 0)


async def test_a_receipt_is_given_up_after_the_last_attempt(receiver: Receiver) -> None:
    receiver.provider.script(FAILED, FAILED, FAILED)

    async with running(receiver, webhook_attempts=2) as gateway:
        await gateway.send("phone")
        await gateway.mock.drain()
        [record] = await gateway.records()
        stats = await gateway.stats()

    assert len(receiver.calls) == 2
    assert (record["receipt"], record["receiptAttempts"]) == ("failed", 2)
    assert (stats["receiptsSent"], stats["receiptsFailed"]) == (0, 1)


async def test_the_config_refuses_bad_values(gateway: Gateway) -> None:
    bad = [
        {"receiptLatency": {"kind": "uniform", "minMs": 9, "maxMs": 1}},
        {"answerLatency": {"kind": "gaussian", "ms": 1}},
        {"loss": 1.5},
        {"failStatus": 502},
        {"devices": {"p": {"offline": [{"start": 10, "end": 5}]}}},
        {"devices": {"p": {"offlien": []}}},
    ]
    for fields in bad:
        response = await gateway.http.post("/push/_mock/config", json=fields)
        assert response.status_code == 400, fields
