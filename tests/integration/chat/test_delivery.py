"""Chat delivery end to end, against the real mock push gateway process.

API (POST /chat/messages: a copy per other member, `chat.deliver` outbox rows) → publisher →
RabbitMQ → consumer (global rate limiter) → mock `POST /push/v1/messages:send` → signed
receipts → API `POST /webhooks/push` (served on a loopback port) → DELIVERED. Every wait is on a
condition with a generous deadline; the mock's randomness is pinned (rates of 0 or 1,
`failNext`, a seed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.auth import ALL_SCOPES
from relaybox.api.settings import ApiSettings
from relaybox.common.chat.delivery import deliver_payload
from relaybox.common.faults import FaultSettings
from relaybox.common.messaging.topology import CHAT_DELIVER, Topology, message_count
from relaybox.common.outbox import enqueue
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.common.signing import SIGNATURE_HEADER, sign
from relaybox.consumer.providers.base import PermanentError, RateLimitedError, RetryableError
from relaybox.consumer.providers.push import (
    OutgoingPush,
    PushProvider,
    PushSettings,
    UnregisteredDeviceError,
)
from relaybox.mock_meta.smtp.sink import SmtpSink
from tests.integration.chat.conftest import People
from tests.integration.conftest import WEBHOOK_SECRET
from tests.support.pipeline import (
    Pipeline,
    consumer_settings,
    eventually,
    filed,
    publisher_settings,
    running_pipeline,
)
from tests.support.processes import mock_meta_process
from tests.support.scripted import Answer, ScriptedProvider
from tests.support.serving import free_port, serve_app

DEADLINE_S = 60.0
SEND_PATH = "/push/v1/messages:send"
NO_LATENCY = {"kind": "fixed", "ms": 0}
DEFAULTS: dict[str, Any] = {
    "seed": 7,
    "answerLatency": NO_LATENCY,
    "receiptLatency": NO_LATENCY,
    "loss": 0,
    "failNext": 0,
    "failStatus": 503,
    "failureRate": 0,
    "retryAfterS": 1,
    "rateLimitPerSecond": 0,
    "unregisteredTokens": [],
    "devices": {},
}


# --- the mock process, the API on a port, the pipeline -------------------------------------------


@pytest.fixture(scope="module")
def db_settings_module(database_url: str) -> DatabaseSettings:
    return DatabaseSettings(url=database_url)


@pytest.fixture(scope="module")
def mock_push(
    db_settings_module: DatabaseSettings, broker_settings: BrokerSettings
) -> Iterator[str]:
    """`python -m relaybox.mock_meta` on free ports, signing receipts with the tests' secret."""
    with mock_meta_process(
        db_settings_module,
        broker_settings,
        push__webhook_secret=WEBHOOK_SECRET,
        push__webhook_backoff_s=0.05,
    ) as url:
        yield url


async def configure(mock_push: str, **changes: Any) -> None:
    async with httpx.AsyncClient(base_url=mock_push) as mock:
        (await mock.post("/push/_mock/config", json=changes)).raise_for_status()


async def mock_get(mock_push: str, path: str) -> Any:
    async with httpx.AsyncClient(base_url=mock_push) as mock:
        response = await mock.get(path)
        response.raise_for_status()
        return response.json()


async def ledger(mock_push: str) -> dict[str, int]:
    """Push calls per Idempotency-Key (`<message id>:<device id>`)."""
    entries = (await mock_get(mock_push, "/ledger"))["push"]["entries"]
    return {key: entry["calls"] for key, entry in entries.items()}


async def receipts_posted(mock_push: str, count: int) -> None:
    """Wait until the mock has posted `count` receipts (and had them acknowledged)."""

    async def posted() -> bool:
        records = (await mock_get(mock_push, "/push/_mock/messages"))["data"]
        return bool(sum(r["receipt"] == "sent" for r in records) >= count)

    await eventually(posted, timeout=DEADLINE_S)


@pytest.fixture
async def receipts_to_api(
    chat_settings: ApiSettings, engine: AsyncEngine, mock_push: str
) -> AsyncIterator[str]:
    """The API on a real port; the mock reset and sending its receipts there."""
    async with serve_app(create_app(chat_settings, engine=engine)) as api_url:
        async with httpx.AsyncClient(base_url=mock_push) as mock:
            (await mock.delete("/push/_mock/messages")).raise_for_status()
        await configure(mock_push, **DEFAULTS, receiptUrl=f"{api_url}/webhooks/push")
        yield api_url


Pipelines = Callable[..., AbstractAsyncContextManager[Pipeline]]


@pytest.fixture
def pipeline_with(
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    mock_push: str,
    receipts_to_api: str,
) -> Pipelines:
    """`pipeline_with(max_attempts=2, push={...})`: the publisher and a consumer pushing to the
    mock, with these consumer settings (`push`: changes to the push provider's)."""

    def start(*, push: dict[str, Any] | None = None, **extra: Any) -> Any:
        provider = {"url": f"{mock_push}{SEND_PATH}", "rate_per_second": 200, **(push or {})}
        con = consumer_settings(
            db_settings, broker_settings, sink.port, push=PushSettings(**provider), **extra
        )
        pub = publisher_settings(db_settings, broker_settings)
        return running_pipeline(engine, topology, pub, con)

    return start


@pytest.fixture
async def chat_pipeline(pipeline_with: Pipelines) -> AsyncIterator[Pipeline]:
    async with pipeline_with() as running:
        yield running


# --- the messenger through its API, and its rows -------------------------------------------------


async def group(people: People, owner: str, *members: str) -> str:
    response = await people(owner).post(
        "/chat/conversations", json={"kind": "group", "title": "Team", "members": list(members)}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def register(people: People, user: str, token: str) -> str:
    response = await people(user).post(
        "/chat/devices", json={"platform": "android", "pushToken": token}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def post(people: People, sender: str, conversation: str, text_: str = "hello") -> str:
    response = await people(sender).post(
        "/chat/messages", json={"conversationId": conversation, "text": text_}
    )
    assert response.status_code in (200, 201, 202), response.text
    return str(response.json()["id"])


async def copies(engine: AsyncEngine, message_id: str) -> dict[str, dict[str, Any]]:
    """The message's recipient copies by user."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT * FROM chat_recipients WHERE message_id = :id"), {"id": message_id}
        )
        return {r["user_id"]: dict(r) for r in rows.mappings()}


async def pushes(engine: AsyncEngine, message_id: str) -> dict[str, dict[str, Any]]:
    """The message's recorded pushes by device id."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT * FROM chat_pushes WHERE message_id = :id"), {"id": message_id}
        )
        return {str(r["device_id"]): dict(r) for r in rows.mappings()}


async def wait_statuses(
    engine: AsyncEngine, message_id: str, expected: dict[str, str]
) -> dict[str, dict[str, Any]]:
    async def reached() -> bool:
        found = await copies(engine, message_id)
        return {u: c["status"] for u, c in found.items()} == expected

    try:
        await eventually(reached, timeout=DEADLINE_S)
    except AssertionError:
        found = await copies(engine, message_id)
        raise AssertionError(
            {u: (c["status"], c["last_error"]) for u, c in found.items()}
        ) from None
    return await copies(engine, message_id)


# --- the pipeline ------------------------------------------------------------------------------


async def test_pushes_are_accepted_once_and_receipts_deliver(
    people: People, engine: AsyncEngine, chat_pipeline: Pipeline, mock_push: str
) -> None:
    conversation = await group(people, "alice", "bob", "carol")
    bob_phone = await register(people, "bob", "tok-bob-phone")
    bob_laptop = await register(people, "bob", "tok-bob-laptop")
    carol_phone = await register(people, "carol", "tok-carol")
    message_id = await post(people, "alice", conversation, "lunch?")
    await wait_statuses(engine, message_id, {"bob": "DELIVERED", "carol": "DELIVERED"})
    await receipts_posted(mock_push, 3)
    await chat_pipeline.worker.run_until_idle()
    done = await copies(engine, message_id)  # a receipt can come before the round's record
    for copy in done.values():
        assert copy["sent_at"] is not None and copy["delivered_at"] is not None
        assert copy["attempts"] == 1 and copy["last_error"] is None
    recorded = await pushes(engine, message_id)
    assert set(recorded) == {bob_phone, bob_laptop, carol_phone}
    assert {p["status"] for p in recorded.values()} == {"ACCEPTED"}
    assert all(p["provider_message_id"].startswith("projects/") for p in recorded.values())
    keys = {f"{message_id}:{d}": 1 for d in (bob_phone, bob_laptop, carol_phone)}
    assert await ledger(mock_push) == keys  # each device pushed exactly once
    # bob has two devices, so two receipts: delivered_at is the earliest of them
    records = (await mock_get(mock_push, "/push/_mock/messages"))["data"]
    bob_times = [r["deliveredAt"] for r in records if r["data"]["recipient"] == "bob"]
    assert done["bob"]["delivered_at"].timestamp() == pytest.approx(min(bob_times), abs=0.001)
    data = records[0]["data"]
    assert data["messageId"] == message_id and data["conversationId"] == conversation
    assert data["sender"] == "alice" and data["seq"] == "1"
    assert records[0]["idempotencyKey"] in keys


async def test_a_recipient_without_a_device_is_sent_and_stays_sent(
    people: People, engine: AsyncEngine, chat_pipeline: Pipeline, mock_push: str
) -> None:
    conversation = await group(people, "alice", "bob", "dave")
    await register(people, "bob", "tok-bob-2")
    message_id = await post(people, "alice", conversation)
    done = await wait_statuses(engine, message_id, {"bob": "DELIVERED", "dave": "SENT"})
    await chat_pipeline.worker.run_until_idle()
    assert done["dave"]["sent_at"] is not None and done["dave"]["attempts"] == 0
    assert (await copies(engine, message_id))["dave"]["status"] == "SENT"
    assert len(await ledger(mock_push)) == 1


async def test_a_dead_token_removes_the_device_and_fails_the_recipient(
    people: People, engine: AsyncEngine, chat_pipeline: Pipeline, mock_push: str
) -> None:
    conversation = await group(people, "alice", "bob", "carol")
    dead = await register(people, "bob", "dead-bob-token")  # the mock's dead tokens: dead-…
    await register(people, "carol", "tok-carol-3")
    message_id = await post(people, "alice", conversation)
    done = await wait_statuses(engine, message_id, {"bob": "FAILED", "carol": "DELIVERED"})
    assert "unregistered" in done["bob"]["last_error"]
    assert "HTTP 404" in done["bob"]["last_error"]
    assert done["bob"]["failed_at"] is not None
    recorded = await pushes(engine, message_id)
    assert recorded[dead]["status"] == "FAILED"
    async with engine.connect() as conn:
        left = await conn.scalar(text("SELECT count(*) FROM chat_devices WHERE user_id = 'bob'"))
    assert left == 0
    # the next message: bob has no device any more, so his copy is SENT (waits for a fetch)
    second = await post(people, "alice", conversation, "again")
    await wait_statuses(engine, second, {"bob": "SENT", "carol": "DELIVERED"})
    await chat_pipeline.worker.run_until_idle()
    assert (await ledger(mock_push))[f"{message_id}:{dead}"] == 1


async def test_a_429_storm_pauses_every_replica_and_spends_no_attempt(
    people: People, engine: AsyncEngine, pipeline_with: Pipelines, mock_push: str
) -> None:
    """Three rounds of 429s with max_attempts=2: flow control, not failures."""
    conversation = await group(people, "alice", "bob", "carol", "erin")
    for user in ("bob", "carol", "erin"):
        await register(people, user, f"tok-{user}-429")
    await configure(mock_push, failNext=9, failStatus=429, retryAfterS=1)
    async with pipeline_with(max_attempts=2) as running:
        message_id = await post(people, "alice", conversation)
        expected = dict.fromkeys(("bob", "carol", "erin"), "DELIVERED")
        await wait_statuses(engine, message_id, expected)
        await running.worker.run_until_idle()
    calls = await ledger(mock_push)
    assert sorted(calls.values()) == [4, 4, 4]  # three refused rounds, then accepted
    stats = await mock_get(mock_push, "/push/_mock/stats")
    assert stats["rejected"] == {"429": 9} and stats["accepted"] == 3
    async with engine.connect() as conn:  # the Retry-After paused the shared limiter
        paused = await conn.scalar(
            text("SELECT paused_until FROM rate_limits WHERE key = :key"), {"key": CHAT_DELIVER}
        )
    assert paused is not None
    records = (await mock_get(mock_push, "/push/_mock/messages"))["data"]
    refused = [r["receivedAt"] for r in records if r["status"] == 429]
    accepted = [r["receivedAt"] for r in records if r["status"] == 200]
    assert min(accepted) - max(refused) >= 0.9  # nothing went out during the 1 s pause


async def test_a_503_storm_is_retried_then_delivered(
    people: People, engine: AsyncEngine, chat_pipeline: Pipeline, mock_push: str
) -> None:
    conversation = await group(people, "alice", "bob", "carol")
    bob = await register(people, "bob", "tok-bob-503")
    carol = await register(people, "carol", "tok-carol-503")
    await configure(mock_push, failNext=4, failStatus=503)
    message_id = await post(people, "alice", conversation)
    await wait_statuses(engine, message_id, {"bob": "DELIVERED", "carol": "DELIVERED"})
    await chat_pipeline.worker.run_until_idle()
    done = await copies(engine, message_id)
    assert {c["attempts"] for c in done.values()} == {3}  # two failed rounds, one accepted
    assert await ledger(mock_push) == {f"{message_id}:{bob}": 3, f"{message_id}:{carol}": 3}


async def test_the_providers_rate_limit_is_respected(
    people: People, engine: AsyncEngine, pipeline_with: Pipelines, mock_push: str
) -> None:
    """The gateway allows 10 pushes a second; relaybox is set to 5: no 429 at all."""
    users = [f"u{i:02d}" for i in range(15)]
    conversation = await group(people, "alice", *users)
    for user in users:
        await register(people, user, f"tok-{user}-rate")
    await configure(mock_push, rateLimitPerSecond=10)
    async with pipeline_with(push={"rate_per_second": 5}) as running:
        message_id = await post(people, "alice", conversation)
        await wait_statuses(engine, message_id, dict.fromkeys(users, "DELIVERED"))
        await running.worker.run_until_idle()
    stats = await mock_get(mock_push, "/push/_mock/stats")
    assert stats["rateLimited"] == 0 and stats["accepted"] == 15
    arrivals = sorted(
        r["receivedAt"] for r in (await mock_get(mock_push, "/push/_mock/messages"))["data"]
    )
    assert arrivals[-1] - arrivals[0] >= (15 - 1) / 5 * 0.9  # paced, not a burst


async def test_a_lost_push_fails_at_the_receipt_deadline_until_a_fetch_proves_it(
    people: People, engine: AsyncEngine, pipeline_with: Pipelines, mock_push: str
) -> None:
    """Accepted is not delivered: a push the gateway lost leaves the copy SENT until the
    receipt deadline, then FAILED with the reason (never pushed again); a fetch still makes it
    DELIVERED. A confirmed copy is left alone by its deadline."""
    conversation = await group(people, "alice", "bob", "carol")
    await register(people, "bob", "tok-bob-lost")
    await register(people, "carol", "tok-carol-ok")
    await configure(mock_push, devices={"tok-bob-lost": {"loss": 1}})
    async with pipeline_with(push={"receipt_timeout_s": 2}) as running:
        message_id = await post(people, "alice", conversation)
        await wait_statuses(engine, message_id, {"bob": "FAILED", "carol": "DELIVERED"})
        await running.worker.run_until_idle()
    bob = (await copies(engine, message_id))["bob"]
    assert bob["delivered_at"] is None and bob["sent_at"] is not None
    assert bob["last_error"] == "no device confirmed delivery within 2 s of the push"
    assert (await ledger(mock_push)) == {f"{message_id}:{d}": 1 for d in await _devices(engine)}
    fetched = await people("bob").get(f"/chat/messages/{message_id}")
    assert fetched.status_code == 200, fetched.text
    assert (await copies(engine, message_id))["bob"]["status"] == "DELIVERED"


async def _devices(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return [str(d) for d in (await conn.scalars(text("SELECT id FROM chat_devices"))).all()]


async def test_an_offline_device_is_delivered_when_it_comes_back(
    people: People, engine: AsyncEngine, chat_pipeline: Pipeline, mock_push: str
) -> None:
    conversation = await group(people, "alice", "bob")
    await register(people, "bob", "tok-bob-offline")
    await configure(mock_push, devices={"tok-bob-offline": {"offline": [{"start": 0}]}})
    message_id = await post(people, "alice", conversation)
    await wait_statuses(engine, message_id, {"bob": "SENT"})

    async def held() -> bool:
        records = (await mock_get(mock_push, "/push/_mock/messages"))["data"]
        return [r["receipt"] for r in records] == ["offline"]

    await eventually(held, timeout=DEADLINE_S)
    assert (await copies(engine, message_id))["bob"]["status"] == "SENT"
    back = time.time()
    await configure(mock_push, devices={})  # the window ends: the held receipt goes out
    done = await wait_statuses(engine, message_id, {"bob": "DELIVERED"})
    assert done["bob"]["delivered_at"].timestamp() >= back - 0.5


async def test_attempts_run_out_then_the_copies_fail_and_a_replay_delivers_them(
    people: People,
    engine: AsyncEngine,
    pipeline_with: Pipelines,
    mock_push: str,
    topology: Topology,
    broker_settings: BrokerSettings,
) -> None:
    conversation = await group(people, "alice", "bob", "carol")
    await register(people, "bob", "tok-bob-down")
    await configure(mock_push, failNext=1000, failStatus=500)
    async with pipeline_with(max_attempts=2) as running:
        message_id = await post(people, "alice", conversation)
        done = await wait_statuses(engine, message_id, {"bob": "FAILED", "carol": "SENT"})
        (dead,) = await filed(engine, 1)
        await running.worker.run_until_idle()
        assert done["bob"]["last_error"].startswith("attempts ran out: HTTP 500")
        assert done["bob"]["attempts"] == 2 and done["bob"]["failed_at"] is not None
        assert list((await ledger(mock_push)).values()) == [2]
        assert await pushes(engine, message_id) == {}  # a retryable failure is never recorded
        assert (dead["route"], dead["row_id"]) == (CHAT_DELIVER, message_id)
        assert dead["payload"]["recipients"] == ["bob"] and dead["attempts"] == 2
        assert dead["last_error"].startswith("HTTP 500")

        # The gateway is fixed: an operator replays the letter, and bob's copy is pushed.
        await configure(mock_push, failNext=0)
        operator = people("root", tenant="ops", scopes=ALL_SCOPES)
        body = {"ids": [str(dead["id"])]}
        answer = await operator.post("/admin/dead-letters/replay", json=body)
        assert answer.status_code == 200, answer.text
        # (carol has no device; the gateway's receipt confirms bob's push)
        await wait_statuses(engine, message_id, {"bob": "DELIVERED", "carol": "SENT"})
        await running.worker.run_until_idle()
        assert list((await ledger(mock_push)).values()) == [3]
        again = await operator.post("/admin/dead-letters/replay", json=body)
        assert again.status_code == 409
    connection = await aio_pika.connect(broker_settings.url)
    async with connection:
        channel = await connection.channel()
        left = await message_count(channel, topology.dead_letter_queue(CHAT_DELIVER))
    assert left == 0  # drained into the office


async def test_a_redelivered_batch_pushes_no_device_twice(
    people: People, engine: AsyncEngine, chat_pipeline: Pipeline, mock_push: str
) -> None:
    """A round that half failed is retried for the rest only; the whole batch sent again (a
    redelivery) pushes nothing."""
    conversation = await group(people, "alice", "bob", "carol", "erin")
    devices = {u: await register(people, u, f"tok-{u}-again") for u in ("bob", "carol", "erin")}
    # the round's first push fails; no receipt ever comes, so the copies stay SENT
    await configure(mock_push, failNext=1, failStatus=503, loss=1)
    message_id = await post(people, "alice", conversation)
    expected = dict.fromkeys(devices, "SENT")
    await wait_statuses(engine, message_id, expected)
    await chat_pipeline.worker.run_until_idle()
    first = await ledger(mock_push)
    assert sorted(first.values()) == [1, 1, 2]

    async with engine.begin() as conn:
        await enqueue(
            conn, routing_key=CHAT_DELIVER, payload=deliver_payload(message_id, list(devices))
        )
    await chat_pipeline.worker.run_until_idle()
    await asyncio.sleep(0.5)
    await chat_pipeline.worker.run_until_idle()
    assert await ledger(mock_push) == first
    assert {c["status"] for c in (await copies(engine, message_id)).values()} == {"SENT"}


async def test_an_error_after_the_gateways_answer_still_records_the_push(
    people: People,
    engine: AsyncEngine,
    pipeline_with: Pipelines,
    mock_push: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    conversation = await group(people, "alice", "bob", "dave")
    phone = await register(people, "bob", "tok-bob-fault")
    fault = FaultSettings(raise_at=f"{CHAT_DELIVER}.after_send")
    with caplog.at_level(logging.ERROR, logger="relaybox.consumer.chat.handler"):
        async with pipeline_with(faults=fault) as running:
            message_id = await post(people, "alice", conversation)
            await wait_statuses(engine, message_id, {"bob": "DELIVERED", "dave": "SENT"})
            await running.worker.run_until_idle()
            await asyncio.sleep(0.5)  # a redelivery, had there been one, would have come by now
            await running.worker.run_until_idle()
    assert (await pushes(engine, message_id))[phone]["status"] == "ACCEPTED"
    assert await ledger(mock_push) == {f"{message_id}:{phone}": 1}
    assert any("accepted pushes alone" in r.message for r in caplog.records)


# --- the receipt webhook -----------------------------------------------------------------------


def receipt(
    message_id: str, recipient: str, at: datetime, rid: str | None = None
) -> dict[str, Any]:
    return {
        "id": rid or uuid.uuid4().hex,
        "name": "projects/p/messages/1",
        "token": "tok",
        "data": {"messageId": message_id, "recipient": recipient, "seq": "1"},
        "deliveredAt": at.isoformat().replace("+00:00", "Z"),
    }


async def post_receipts(
    client: httpx.AsyncClient, receipts: list[dict[str, Any]], secret: str = WEBHOOK_SECRET
) -> httpx.Response:
    body = json.dumps({"receipts": receipts}).encode()
    headers = {SIGNATURE_HEADER: sign(secret, body), "Content-Type": "application/json"}
    return await client.post("/webhooks/push", content=body, headers=headers)


async def test_receipts_move_forward_only_and_keep_the_earliest_time(
    people: People, engine: AsyncEngine
) -> None:
    conversation = await group(people, "alice", "bob", "carol")
    message_id = await post(people, "alice", conversation)
    hook = people("anyone")
    t0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    first = await post_receipts(hook, [receipt(message_id, "bob", t0 + timedelta(seconds=5))])
    assert first.status_code == 200, first.text
    assert first.json() == {"received": 1, "applied": 1}
    bob = (await copies(engine, message_id))["bob"]
    assert bob["status"] == "DELIVERED"  # straight from PENDING: a device proved it
    # a duplicate and a later receipt change nothing; an earlier one moves the time back
    again = await post_receipts(
        hook,
        [
            receipt(message_id, "bob", t0 + timedelta(seconds=5)),
            receipt(message_id, "bob", t0 + timedelta(seconds=9)),
        ],
    )
    assert again.json() == {"received": 2, "applied": 0}
    earlier = await post_receipts(hook, [receipt(message_id, "bob", t0 + timedelta(seconds=1))])
    assert earlier.json()["applied"] == 1
    assert (await copies(engine, message_id))["bob"]["delivered_at"] == t0 + timedelta(seconds=1)
    # READ never moves back, whatever receipt comes late
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE chat_recipients SET status = 'READ', read_at = now() "
                "WHERE message_id = :id AND user_id = 'carol'"
            ),
            {"id": message_id},
        )
    late = await post_receipts(
        hook,
        [receipt(message_id, "carol", t0), receipt(message_id, "carol", t0, rid="dup")] * 2,
    )
    assert late.status_code == 200 and late.json()["received"] == 4
    carol = (await copies(engine, message_id))["carol"]
    assert carol["status"] == "READ" and carol["delivered_at"] == t0


async def test_unknown_receipts_are_acknowledged_and_ignored(
    people: People, engine: AsyncEngine
) -> None:
    conversation = await group(people, "alice", "bob")
    message_id = await post(people, "alice", conversation)
    now = datetime.now(UTC)
    response = await post_receipts(
        people("anyone"),
        [
            receipt(str(uuid.uuid4()), "bob", now),  # no such message
            receipt(message_id, "zed", now),  # no such recipient
            receipt("not-a-uuid", "bob", now),  # not one of ours
            receipt(message_id, "bob\x00", now),  # a NUL names no user
        ],
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 4, "applied": 0}
    assert (await copies(engine, message_id))["bob"]["status"] == "PENDING"
    empty = await post_receipts(people("anyone"), [])
    assert empty.json() == {"received": 0, "applied": 0}


async def test_a_receipt_without_a_valid_signature_is_refused(
    people: People, engine: AsyncEngine
) -> None:
    conversation = await group(people, "alice", "bob")
    message_id = await post(people, "alice", conversation)
    hook = people("anyone")
    good = [receipt(message_id, "bob", datetime.now(UTC))]
    wrong = await post_receipts(hook, good, secret="not-the-secret")
    body = json.dumps({"receipts": good}).encode()
    missing = await hook.post("/webhooks/push", content=body)
    for response in (wrong, missing):
        assert response.status_code == 401, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["field"] == SIGNATURE_HEADER
    assert (await copies(engine, message_id))["bob"]["status"] == "PENDING"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[]", "body"),
        (b"{}", "receipts"),
        (b'{"receipts": [{"id": "r1", "deliveredAt": "2026-11-29T10:00:00Z"}]}', "receipts.0.data"),
        (
            b'{"receipts": [{"id": "r1", "data": {"recipient": "bob"}, '
            b'"deliveredAt": "2026-11-29T10:00:00Z"}]}',
            "receipts.0.data.messageId",
        ),
        (
            b'{"receipts": [{"id": "r1", "data": {"messageId": "m", "recipient": "bob"}, '
            b'"deliveredAt": "yesterday"}]}',
            "receipts.0.deliveredAt",
        ),
        (b'{"receipts": [{"id": 7, "data": {}, "deliveredAt": 1}]}', "receipts.0.id"),
    ],
)
async def test_a_malformed_receipt_body_is_a_400_naming_the_field(
    people: People, body: bytes, field: str
) -> None:
    headers = {SIGNATURE_HEADER: sign(WEBHOOK_SECRET, body), "Content-Type": "application/json"}
    response = await people("anyone").post("/webhooks/push", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["field"] == field


# --- the provider's reading of the gateway's answers ------------------------------------------


def _google(code: int, status: str, message: str, **extra: Any) -> Answer:
    return Answer.json(
        code, {"error": {"code": code, "status": status, "message": message, **extra}}
    )


async def test_the_push_provider_reads_every_answer_the_contract_allows() -> None:
    provider = ScriptedProvider()
    fcm = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
    provider.script(
        Answer(200, b"null", (("content-type", "application/json"),)),
        Answer(204),
        Answer.json(200, {"name": "projects/p/messages/9"}),
        _google(404, "NOT_FOUND", "gone", details=[{"@type": fcm, "errorCode": "UNREGISTERED"}]),
        _google(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM token"),
        _google(400, "INVALID_ARGUMENT", "Message payload is too big"),
        _google(403, "PERMISSION_DENIED", "SenderId mismatch"),
        Answer.json(429, {}, **{"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}),
        _google(503, "UNAVAILABLE", "later"),
    )
    async with serve_app(provider) as url:
        push = PushProvider(PushSettings(url=f"{url}{SEND_PATH}", server_key="k-secret"))
        one = OutgoingPush("m", "d", "tok", {"messageId": "m"}, "t", "b")
        try:
            assert await push.send(one) is None
            assert await push.send(one) is None
            assert await push.send(one) == "projects/p/messages/9"
            with pytest.raises(UnregisteredDeviceError):
                await push.send(one)
            with pytest.raises(UnregisteredDeviceError):
                await push.send(one)
            with pytest.raises(PermanentError) as too_big:
                await push.send(one)
            assert not isinstance(too_big.value, UnregisteredDeviceError)
            with pytest.raises(PermanentError):
                await push.send(one)
            with pytest.raises(RateLimitedError) as limited:
                await push.send(one)
            assert limited.value.retry_after == 24 * 3600.0  # capped
            with pytest.raises(RetryableError):
                await push.send(one)
        finally:
            await push.close()
    call = provider.sends()[0]
    assert call.headers["authorization"] == "Bearer k-secret"
    assert call.headers["idempotency-key"] == "m:d"
    assert call.json()["message"]["token"] == "tok"
    refused = PushProvider(PushSettings(url=f"http://127.0.0.1:{free_port()}{SEND_PATH}"))
    try:
        with pytest.raises(RetryableError, match="unreachable"):
            await refused.send(one)
    finally:
        await refused.close()
