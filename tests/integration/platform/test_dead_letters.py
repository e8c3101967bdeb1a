"""The dead-letter office, end to end on real servers: every death is drained into
`dead_letters`, an operator lists, replays and discards through the API, and a replay sends once.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.auth import ALL_SCOPES, issue_token
from relaybox.api.settings import ApiSettings
from relaybox.common.messaging.topology import EMAIL_SEND, Topology
from relaybox.common.outbox import DEAD, enqueue
from relaybox.common.settings import BrokerSettings
from relaybox.consumer import metrics
from relaybox.mock_meta.smtp.sink import SinkConfig, SmtpSink
from tests.support.broker import publish_raw, queue_depth
from tests.support.clients import api_client
from tests.support.pipeline import (
    Pipeline,
    dead_letters,
    email_row,
    eventually,
    filed,
    wait_final,
)

BODY = {"to": "bob@example.com", "subject": "Hi", "text": "Hello Bob"}
LETTERS = "/admin/dead-letters"


@pytest.fixture
async def admin(api_settings: ApiSettings, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The API called by an operator (the `admin` scope)."""
    token = issue_token(api_settings, "operator", ALL_SCOPES)
    async with api_client(api_settings, engine, token) as client:
        yield client


async def dead_email(client: httpx.AsyncClient, engine: AsyncEngine, sink: SmtpSink) -> str:
    """An email whose attempts ran out (the provider answered 451 each time): its letter's id."""
    sink.configure(SinkConfig(mode="transient"))
    answer = await client.post("/send", json=BODY)
    assert answer.status_code == 202, answer.text
    email_id = str(answer.json()["id"])
    assert (await wait_final(engine, 1))[email_id] == "FAILED"
    (letter,) = await filed(engine, 1)
    assert letter["row_id"] == email_id
    return str(letter["id"])


async def test_an_exhausted_email_is_filed_and_replayed_once_after_the_fix(
    client: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    pipeline: Pipeline,
    engine: AsyncEngine,
    sink: SmtpSink,
    topology: Topology,
    broker_settings: BrokerSettings,
) -> None:
    letter_id = await dead_email(client, engine, sink)
    (letter,) = await dead_letters(engine)
    assert letter["route"] == EMAIL_SEND and letter["status"] == "open"
    assert letter["attempts"] == 3 and letter["count"] == 1
    assert "451" in letter["last_error"]
    # RabbitMQ stays a transport: the DLQ is empty once drained.
    await pipeline.worker.run_until_idle()
    assert await queue_depth(broker_settings.url, topology.dead_letter_queue(EMAIL_SEND)) == 0

    page = (await admin.get(LETTERS, params={"route": EMAIL_SEND, "status": "open"})).json()
    assert [item["id"] for item in page["data"]] == [letter_id]
    assert page["meta"]["total"] == 1
    shown = (await admin.get(f"{LETTERS}/{letter_id}")).json()
    assert shown["rowId"] == letter["row_id"] and "451" in shown["lastError"]

    await pipeline.worker.refresh_dlq_metrics()
    assert metrics.DEAD_LETTERS_OPEN.labels(EMAIL_SEND)._value.get() == 1

    sink.configure(SinkConfig())  # the provider is fixed
    answer = await admin.post(f"{LETTERS}/replay", json={"ids": [letter_id]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "replayed": 1,
        "results": [{"id": letter_id, "outcome": "replayed", "reason": None}],
        "more": False,
    }
    email_id = letter["row_id"]
    await eventually(lambda: _status_is(engine, email_id, "SENT"))
    await pipeline.worker.run_until_idle()
    assert len(sink.store.find()) == 1
    sent = await email_row(engine, email_id)
    assert sent["attempts"] == 1  # a replay starts the attempts again

    again = await admin.post(f"{LETTERS}/replay", json={"ids": [letter_id]})
    assert again.status_code == 409
    assert "already replayed" in again.json()["detail"]
    await pipeline.worker.refresh_dlq_metrics()
    assert metrics.DEAD_LETTERS_OPEN.labels(EMAIL_SEND)._value.get() == 0
    assert len(sink.store.find()) == 1


async def _status_is(engine: AsyncEngine, email_id: str, status: str) -> bool:
    return bool((await email_row(engine, email_id))["status"] == status)


async def test_two_replays_at_once_send_once(
    client: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    pipeline: Pipeline,
    engine: AsyncEngine,
    sink: SmtpSink,
) -> None:
    letter_id = await dead_email(client, engine, sink)
    sink.configure(SinkConfig())
    body = {"ids": [letter_id]}
    answers = await asyncio.gather(
        admin.post(f"{LETTERS}/replay", json=body), admin.post(f"{LETTERS}/replay", json=body)
    )
    assert sorted(a.status_code for a in answers) == [200, 409]
    await wait_final(engine, 1)
    await pipeline.worker.run_until_idle()
    assert len(sink.store.find()) == 1
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM outbox")) == 0


async def test_replaying_a_letter_whose_email_was_sent_is_refused(
    client: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    pipeline: Pipeline,
    engine: AsyncEngine,
    sink: SmtpSink,
) -> None:
    """A stale copy of an email that was sent after all dies: its replay sends nothing."""
    answer = await client.post("/send", json=BODY)
    email_id = str(answer.json()["id"])
    assert (await wait_final(engine, 1))[email_id] == "SENT"
    async with engine.begin() as conn:
        await enqueue(
            conn,
            routing_key=EMAIL_SEND,
            payload={"id": email_id},
            destination=DEAD,
            headers={"x-last-error": "a stale copy", "x-attempts": 1},
        )
    (letter,) = await filed(engine, 1)
    refused = await admin.post(f"{LETTERS}/replay", json={"ids": [str(letter["id"])]})
    assert refused.status_code == 409
    problem = refused.json()
    assert f"email {email_id} is already SENT; nothing to replay" in problem["detail"]
    assert problem["results"][0]["outcome"] == "refused"
    by_filter = await admin.post(f"{LETTERS}/replay", json={"route": EMAIL_SEND})
    assert by_filter.status_code == 200  # a filter that replays nothing is not an error
    assert by_filter.json()["replayed"] == 0
    assert "already SENT" in by_filter.json()["results"][0]["reason"]
    assert (await dead_letters(engine))[0]["status"] == "open"  # a refusal changes nothing
    await pipeline.worker.run_until_idle()
    assert len(sink.store.find()) == 1


async def test_poison_messages_are_filed_with_the_reason_and_without_secrets(
    pipeline: Pipeline, engine: AsyncEngine, topology: Topology, broker_settings: BrokerSettings
) -> None:
    url = broker_settings.url
    await publish_raw(url, topology.exchange, EMAIL_SEND, b"not json")
    missing = str(uuid.uuid4())
    await publish_raw(url, topology.exchange, EMAIL_SEND, {"id": missing, "token": "s3cr3t-tok"})
    found = {json.dumps(letter["payload"]): letter for letter in await filed(engine, 2)}
    garbled = found[json.dumps({"body": "not json"})]
    assert garbled["last_error"].startswith("unprocessable:")
    orphan = found[json.dumps({"id": missing})]  # the token never enters the office
    assert orphan["row_id"] == missing and f"no emails row {missing}" in orphan["last_error"]
    assert "s3cr3t-tok" not in json.dumps([str(v) for v in found.values()])
    await pipeline.worker.run_until_idle()
    assert await queue_depth(url, topology.dead_letter_queue(EMAIL_SEND)) == 0


async def test_a_death_delivered_twice_counts_once_and_a_new_death_reopens_the_letter(
    admin: httpx.AsyncClient,
    pipeline: Pipeline,
    engine: AsyncEngine,
    topology: Topology,
    broker_settings: BrokerSettings,
) -> None:
    url, dlx = broker_settings.url, topology.dead_letter_exchange
    payload = {"id": str(uuid.uuid4())}
    for _ in range(2):  # the drain crashed before its ack: the same death again
        await publish_raw(url, dlx, EMAIL_SEND, payload, message_id="death-1")
    await filed(engine, 1)
    await pipeline.worker.run_until_idle()
    (letter,) = await dead_letters(engine)
    assert letter["count"] == 1
    # Published straight to the DLX: neither a handler's reason nor RabbitMQ's x-death.
    assert letter["attempts"] == 1 and letter["last_error"] is None

    discarded = await admin.post(f"{LETTERS}/discard", json={"ids": [str(letter["id"])]})
    assert discarded.status_code == 200 and discarded.json()["discarded"] == 1
    refused = await admin.post(f"{LETTERS}/replay", json={"ids": [str(letter["id"])]})
    assert refused.status_code == 409 and "discarded at" in refused.json()["detail"]

    await publish_raw(url, dlx, EMAIL_SEND, payload, message_id="death-2")  # it died again

    async def reopened() -> bool:
        return bool((await dead_letters(engine))[0]["count"] == 2)

    await eventually(reopened)
    (letter,) = await dead_letters(engine)
    assert letter["status"] == "open"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ids": [str(uuid.uuid4())], "route": EMAIL_SEND}, None),
        ({}, None),
        ({"since": "yesterday"}, "since"),
        ({"route": "sms.send"}, "route"),
        ({"ids": []}, "ids"),
    ],
)
async def test_a_bad_selection_is_a_400_naming_the_field(
    admin: httpx.AsyncClient, body: dict[str, Any], field: str | None
) -> None:
    for action in ("replay", "discard"):
        answer = await admin.post(f"{LETTERS}/{action}", json=body)
        assert answer.status_code == 400, answer.text
        if field:
            assert field in answer.text


async def test_unknown_letters_are_404_and_409(admin: httpx.AsyncClient) -> None:
    unknown = str(uuid.uuid4())
    assert (await admin.get(f"{LETTERS}/{unknown}")).status_code == 404
    answer = await admin.post(f"{LETTERS}/replay", json={"ids": [unknown]})
    assert answer.status_code == 409
    assert f"no dead letter with id {unknown}" in answer.json()["detail"]


async def file_letter(engine: AsyncEngine, route: str, payload: dict[str, Any], row: str) -> str:
    """A dead letter as the drain files it."""
    letter_id = str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO dead_letters (id, route, fingerprint, row_id, payload, last_error)"
                " VALUES (:id, :route, :print, :row, CAST(:payload AS jsonb), 'it died')"
            ),
            {
                "id": letter_id,
                "route": route,
                "print": letter_id,
                "row": row,
                "payload": json.dumps(payload),
            },
        )
    return letter_id


async def test_a_failed_meta_message_is_put_back_and_enqueued_in_one_transaction(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """No consumer runs: what the replay wrote is read straight from the tables."""
    body = {"channel": "whatsapp", "to": "+15550001111", "text": "hello"}
    sent = await client.post("/messages/send", json=body)
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["id"]
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM outbox"))
        await conn.execute(
            text(
                "UPDATE messages SET status = 'FAILED', attempts = 3, throttled = 1,"
                " failed_at = now(), last_error = 'HTTP 500' WHERE id = :id"
            ),
            {"id": message_id},
        )
    letter_id = await file_letter(engine, "meta.send", {"id": message_id}, message_id)
    answer = await admin.post(f"{LETTERS}/replay", json={"ids": [letter_id]})
    assert answer.status_code == 200, answer.text
    async with engine.connect() as conn:
        row = (
            (await conn.execute(text("SELECT * FROM messages WHERE id = :id"), {"id": message_id}))
            .mappings()
            .one()
        )
        outbox = (await conn.execute(text("SELECT * FROM outbox"))).mappings().all()
    assert (row["status"], row["attempts"], row["throttled"], row["failed_at"]) == (
        "PENDING",
        0,
        0,
        None,
    )
    (queued,) = outbox
    assert (queued["routing_key"], queued["destination"]) == ("meta.send", "work")
    assert queued["payload"] == {"id": message_id}
    assert queued["headers"]["x-replay-of"] == letter_id
    shown = (await admin.get(f"{LETTERS}/{letter_id}")).json()
    assert shown["status"] == "replayed" and shown["replayedAt"] is not None


async def test_refusals_say_why_and_change_nothing(
    admin: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    gone = str(uuid.uuid4())
    cases = {
        await file_letter(engine, "email.send", {"id": gone}, gone): f"email {gone} no longer",
        await file_letter(engine, "mailing.parse", {"id": gone}, gone): f"mailing {gone} no",
        await file_letter(
            engine, "chat.deliver", {"messageId": gone, "recipients": ["bob"]}, gone
        ): f"chat message {gone} has no copies",
        await file_letter(engine, "email.send", {"body": "not json"}, ""): "names no email id",
    }
    answer = await admin.post(f"{LETTERS}/replay", json={"ids": list(cases)})
    assert answer.status_code == 409
    reasons = {r["id"]: r["reason"] for r in answer.json()["results"]}
    for letter_id, reason in cases.items():
        assert reason in reasons[letter_id], reasons[letter_id]
    page = (await admin.get(LETTERS, params={"status": "open"})).json()
    assert page["meta"]["total"] == 4
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM outbox")) == 0
