"""POST /webhooks/mock-meta: signatures, idempotent and out-of-order inbound messages, forward-only
status events (also the ones that arrive before the message is recorded as sent), handshake."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from relaybox.api.app import create_app
from relaybox.api.settings import ApiSettings, MetaGatewaySettings
from relaybox.common.gateway.status_events import apply_status_events
from relaybox.common.gateway.timestamps import parse_provider_timestamp
from relaybox.common.signing import SIGNATURE_HEADER, sign
from tests.integration.conftest import WEBHOOK_SECRET

HOOK = "/webhooks/mock-meta"
PROBLEM = "application/problem+json"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    """T0 + `seconds` as the mock formats it (ISO 8601, milliseconds, `Z`)."""
    moment = T0 + timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def inbound(
    event_id: str | None = None,
    *,
    text: str = "hello",
    sender: str = "+15550001",
    channel: str = "whatsapp",
    seconds: float = 0,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "eventId": event_id or f"evt-{uuid.uuid4().hex[:12]}",
        "type": "message",
        "channel": channel,
        "from": sender,
        "text": text,
        "timestamp": at(seconds),
        **extra,
    }


def status_event(
    provider_message_id: str, status: str, *, seconds: float = 0, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "eventId": event_id or f"evt-{uuid.uuid4().hex[:12]}",
        "type": "status",
        "channel": "whatsapp",
        "providerMessageId": provider_message_id,
        "status": status,
        "timestamp": at(seconds),
    }


async def post_event(
    client: httpx.AsyncClient,
    event: Any,
    *,
    secret: str | None = WEBHOOK_SECRET,
    raw: bytes | None = None,
) -> httpx.Response:
    """POST the event signed with `secret` (None: unsigned), as the mock does."""
    body = raw if raw is not None else json.dumps(event).encode()
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    return await client.post(HOOK, content=body, headers=headers)


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(text(sql), params)


async def stored(engine: AsyncEngine) -> tuple[int, int, int]:
    """(webhook_events, conversations, messages) row counts."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM webhook_events), "
                    "(SELECT count(*) FROM conversations), (SELECT count(*) FROM messages)"
                )
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


async def only_conversation(client: httpx.AsyncClient) -> dict[str, Any]:
    listed = (await client.get("/conversations", params={"include_archived": "true"})).json()
    assert listed["meta"]["total"] == 1, listed
    detail = await client.get(f"/conversations/{listed['data'][0]['id']}")
    assert detail.status_code == 200, detail.text
    body: dict[str, Any] = detail.json()
    return body


@pytest.fixture
async def gateway(
    api_settings: ApiSettings, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    """A client without a bearer token: the webhook authenticates by its signature alone."""
    async with app_client(api_settings, engine) as public:
        yield public


@asynccontextmanager
async def app_client(
    settings: ApiSettings, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, engine=engine)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://relaybox.test") as public:
        yield public


def with_meta(settings: ApiSettings, **meta: Any) -> ApiSettings:
    meta.setdefault("webhook_secret", WEBHOOK_SECRET)
    meta.setdefault("tenant", "test-client")
    return settings.model_copy(update={"meta": MetaGatewaySettings(**meta)})


# --- inbound messages -------------------------------------------------------------------------


async def test_inbound_message_makes_a_conversation_and_a_received_message(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    event = inbound("evt-1", text="Hi there", sender="+15550001", seconds=5)
    response = await post_event(gateway, event)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "processed", "eventId": "evt-1"}

    conversation = await only_conversation(client)
    assert conversation["channel"] == "whatsapp"
    assert conversation["participantId"] == "+15550001"
    assert conversation["unreadCount"] == 1
    assert conversation["status"] == "open"
    assert conversation["lastMessagePreview"] == "Hi there"
    assert datetime.fromisoformat(conversation["lastMessageAt"]) == T0 + timedelta(seconds=5)
    assert conversation["archivedAt"] is None and conversation["lastReadAt"] is None
    [message] = conversation["messages"]
    assert message["direction"] == "inbound"
    assert message["status"] == "RECEIVED"
    assert message["text"] == "Hi there"
    assert message["to"] == "+15550001"
    assert message["conversationId"] == conversation["id"]
    assert datetime.fromisoformat(message["sortAt"]) == T0 + timedelta(seconds=5)

    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT provider, event_id, kind, payload, applied_at IS NOT NULL "
                    "FROM webhook_events"
                )
            )
        ).one()
        provider_event_id = await conn.scalar(text("SELECT provider_event_id FROM messages"))
    assert tuple(row) == ("mock-meta", "evt-1", "message", event, True)
    assert provider_event_id == "evt-1"


async def test_same_webhook_three_times_is_one_event_one_message_one_unread(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    event = inbound("evt-dup")
    answers = [await post_event(gateway, event) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json()["status"] for a in answers] == ["processed", "duplicate", "duplicate"]
    assert await stored(engine) == (1, 1, 1)
    assert (await only_conversation(client))["unreadCount"] == 1


async def test_an_inbound_event_older_than_the_retention_is_acknowledged_and_not_stored(
    api_settings: ApiSettings, engine: AsyncEngine
) -> None:
    """The sweeper forgets events after RELAYBOX_WEBHOOK_EVENT_RETENTION_H: a redelivery of one
    older than that could not be recognised, so an event that old is not taken as new."""
    settings = api_settings.model_copy(update={"webhook_event_retention_h": 168.0})
    now = datetime.now(UTC)
    old = {**inbound("evt-old"), "timestamp": (now - timedelta(hours=169)).isoformat()}
    recent = {**inbound("evt-recent"), "timestamp": (now - timedelta(hours=167)).isoformat()}
    async with app_client(settings, engine) as client:
        expired = await post_event(client, old)
        assert expired.status_code == 200, expired.text
        assert expired.json() == {"status": "expired", "eventId": "evt-old"}
        assert await stored(engine) == (0, 0, 0)
        processed = await post_event(client, recent)
        assert processed.json() == {"status": "processed", "eventId": "evt-recent"}
        assert await stored(engine) == (1, 1, 1)


async def test_a_duplicate_with_another_body_changes_nothing(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await post_event(gateway, inbound("evt-x", text="first", seconds=1))
    again = await post_event(gateway, inbound("evt-x", text="second", seconds=9))
    assert again.json()["status"] == "duplicate"
    conversation = await only_conversation(client)
    assert conversation["lastMessagePreview"] == "first"
    assert [m["text"] for m in conversation["messages"]] == ["first"]
    assert await stored(engine) == (1, 1, 1)


async def test_twenty_concurrent_posts_of_one_event_make_one_message(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    event = inbound("evt-burst")
    answers = await asyncio.gather(*(post_event(gateway, event) for _ in range(20)))
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    outcomes = sorted(a.json()["status"] for a in answers)
    assert outcomes == ["duplicate"] * 19 + ["processed"]
    assert await stored(engine) == (1, 1, 1)
    assert (await only_conversation(client))["unreadCount"] == 1


async def test_concurrent_distinct_events_of_one_sender_all_count(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Twenty different events racing to create one conversation: one conversation, 20 unread,
    and the newest message's preview whatever order they committed in."""
    events = [inbound(f"evt-{i}", text=f"message {i}", seconds=i) for i in range(20)]
    answers = await asyncio.gather(*(post_event(gateway, e) for e in events))
    assert {a.json()["status"] for a in answers} == {"processed"}
    assert await stored(engine) == (20, 1, 20)
    conversation = await only_conversation(client)
    assert conversation["unreadCount"] == 20
    assert conversation["lastMessagePreview"] == "message 19"
    assert datetime.fromisoformat(conversation["lastMessageAt"]) == T0 + timedelta(seconds=19)
    assert [m["text"] for m in conversation["messages"]] == [
        f"message {i}" for i in range(19, -1, -1)
    ]


async def test_out_of_order_events_sort_by_provider_time_and_last_message_only_moves_forward(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    await post_event(gateway, inbound(text="second", seconds=20))
    await post_event(gateway, inbound(text="first", seconds=10))  # arrives late
    conversation = await only_conversation(client)
    assert [m["text"] for m in conversation["messages"]] == ["second", "first"]
    assert conversation["lastMessagePreview"] == "second"
    assert datetime.fromisoformat(conversation["lastMessageAt"]) == T0 + timedelta(seconds=20)
    assert conversation["unreadCount"] == 2

    await post_event(gateway, inbound(text="third", seconds=30))
    await post_event(gateway, inbound(text="between", seconds=25))
    conversation = await only_conversation(client)
    assert [m["text"] for m in conversation["messages"]] == ["third", "between", "second", "first"]
    assert conversation["lastMessagePreview"] == "third"
    assert datetime.fromisoformat(conversation["lastMessageAt"]) == T0 + timedelta(seconds=30)


async def test_same_timestamp_takes_the_later_arrival_as_preview(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    await post_event(gateway, inbound(text="one", seconds=1))
    await post_event(gateway, inbound(text="two", seconds=1))
    assert (await only_conversation(client))["lastMessagePreview"] == "two"


async def test_preview_is_the_first_200_characters(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    long_text = "é" * 150 + "x" * 150
    await post_event(gateway, inbound(text=long_text))
    conversation = await only_conversation(client)
    assert conversation["lastMessagePreview"] == long_text[:200]
    assert conversation["messages"][0]["text"] == long_text


async def test_inbound_message_reopens_and_unarchives(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    await post_event(gateway, inbound(seconds=1))
    conversation_id = (await only_conversation(client))["id"]
    for action in ("close", "archive"):
        assert (await client.post(f"/conversations/{conversation_id}/{action}")).status_code == 200
    closed = await only_conversation(client)
    assert closed["status"] == "closed" and closed["archivedAt"] is not None
    await post_event(gateway, inbound(seconds=2))
    reopened = await only_conversation(client)
    assert reopened["status"] == "open"
    assert reopened["archivedAt"] is None
    assert reopened["unreadCount"] == 2


async def test_each_channel_and_sender_has_its_own_conversation(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await post_event(gateway, inbound(sender="alice", channel="whatsapp"))
    await post_event(gateway, inbound(sender="alice", channel="instagram"))
    await post_event(gateway, inbound(sender="bob", channel="whatsapp"))
    await post_event(gateway, inbound(sender="alice", channel="whatsapp"))
    assert await stored(engine) == (4, 3, 4)
    listed = (await client.get("/conversations")).json()
    unread = {(c["channel"], c["participantId"]): c["unreadCount"] for c in listed["data"]}
    assert unread == {("whatsapp", "alice"): 2, ("instagram", "alice"): 1, ("whatsapp", "bob"): 1}


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2025-03-01T12:00:00.250Z", T0 + timedelta(milliseconds=250)),
        ("2025-03-01T14:00:00+02:00", T0),
        ("2025-03-01T12:00:00", T0),  # no offset: UTC, as the mock reads it
        (int(T0.timestamp()), T0),
        (T0.timestamp() + 0.5, T0 + timedelta(milliseconds=500)),
        (str(int(T0.timestamp())), T0),  # Meta's own form: Unix seconds as a string
    ],
    ids=["iso-z", "iso-offset", "iso-naive", "unix-int", "unix-float", "unix-string"],
)
async def test_timestamp_forms(
    gateway: httpx.AsyncClient, engine: AsyncEngine, timestamp: Any, expected: datetime
) -> None:
    response = await post_event(gateway, {**inbound(), "timestamp": timestamp})
    assert response.status_code == 200, response.text
    assert await scalar(engine, "SELECT sort_at FROM messages") == expected


async def test_unknown_fields_are_ignored_and_kept_in_the_payload(
    gateway: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    event = inbound(extra={"nested": [1, {"a": "b"}]}, profileName="Alice")
    assert (await post_event(gateway, event)).status_code == 200
    assert await scalar(engine, "SELECT payload FROM webhook_events") == event


async def test_nul_in_an_ignored_field_is_stored_replaced(
    gateway: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """jsonb cannot hold U+0000; a field we ignore never makes the provider's event fail."""
    event = inbound(note="a\x00b", extra={"k\x00": ["\x00"]})
    assert (await post_event(gateway, event)).status_code == 200
    stored = await scalar(engine, "SELECT payload FROM webhook_events")
    assert stored == {**event, "note": "a\ufffdb", "extra": {"k\ufffd": ["\ufffd"]}}


async def test_type_defaults_to_message(gateway: httpx.AsyncClient, engine: AsyncEngine) -> None:
    event = inbound()
    del event["type"]
    response = await post_event(gateway, event)
    assert response.status_code == 200, response.text
    assert await stored(engine) == (1, 1, 1)


# --- validation -------------------------------------------------------------------------------

GOOD = inbound("evt-good")
STATUS = status_event("pm-1", "delivered", event_id="evt-status")


def _without(event: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != key}


BAD_EVENTS: list[tuple[str, Any, str]] = [
    ("unknown channel", {**GOOD, "channel": "sms"}, "channel"),
    ("eventId missing", _without(GOOD, "eventId"), "eventId"),
    ("eventId empty", {**GOOD, "eventId": ""}, "eventId"),
    ("eventId number", {**GOOD, "eventId": 42}, "eventId"),
    ("eventId 256 chars", {**GOOD, "eventId": "e" * 256}, "eventId"),
    ("from missing", _without(GOOD, "from"), "from"),
    ("from blank", {**GOOD, "from": "  "}, "from"),
    ("from newline", {**GOOD, "from": "a\nb"}, "from"),
    ("text missing", _without(GOOD, "text"), "text"),
    ("text empty", {**GOOD, "text": ""}, "text"),
    ("text null", {**GOOD, "text": None}, "text"),
    ("timestamp missing", _without(GOOD, "timestamp"), "timestamp"),
    ("timestamp words", {**GOOD, "timestamp": "yesterday"}, "timestamp"),
    ("timestamp milliseconds", {**GOOD, "timestamp": 1_740_830_400_000}, "timestamp"),
    ("timestamp boolean", {**GOOD, "timestamp": True}, "timestamp"),
    ("timestamp object", {**GOOD, "timestamp": {"s": 1}}, "timestamp"),
    ("unknown type", {**GOOD, "type": "reaction"}, "type"),
    ("type null", {**GOOD, "type": None}, "type"),
    ("status unknown", {**STATUS, "status": "failed"}, "status"),
    ("status upper case", {**STATUS, "status": "READ"}, "status"),
    ("providerMessageId missing", _without(STATUS, "providerMessageId"), "providerMessageId"),
    ("status channel missing", _without(STATUS, "channel"), "channel"),
    ("status bad timestamp", {**STATUS, "timestamp": "2025-13-01T00:00:00Z"}, "timestamp"),
    ("array", [GOOD], "body"),
    ("string", "hello", "body"),
    ("null", None, "body"),
]


@pytest.mark.parametrize(
    ("event", "field"), [c[1:] for c in BAD_EVENTS], ids=[c[0] for c in BAD_EVENTS]
)
async def test_malformed_event_is_a_400_naming_the_field_and_stores_nothing(
    gateway: httpx.AsyncClient, engine: AsyncEngine, event: Any, field: str
) -> None:
    response = await post_event(gateway, event)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["field"] == field, problem
    assert field in problem["detail"]
    assert "Value error" not in problem["detail"]
    assert await stored(engine) == (0, 0, 0)


@pytest.mark.parametrize("raw", [b"", b"{not json", b'{"eventId": "a",', b"\xff\xfe"], ids=repr)
async def test_non_json_body_is_a_400_naming_the_body(
    gateway: httpx.AsyncClient, engine: AsyncEngine, raw: bytes
) -> None:
    response = await post_event(gateway, None, raw=raw)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "body"
    assert await stored(engine) == (0, 0, 0)


async def test_every_bad_field_is_reported(gateway: httpx.AsyncClient) -> None:
    response = await post_event(gateway, {"eventId": "e", "channel": "sms", "text": ""})
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"channel", "from", "text", "timestamp"}


# --- signatures -------------------------------------------------------------------------------


def _tampered() -> tuple[bytes, str]:
    """A signature of one body sent with another."""
    signed_body = json.dumps(GOOD).encode()
    return json.dumps({**GOOD, "text": "changed"}).encode(), sign(WEBHOOK_SECRET, signed_body)


BAD_SIGNATURES: list[tuple[str, dict[str, str]]] = [
    ("missing", {}),
    ("empty", {SIGNATURE_HEADER: ""}),
    ("another secret", {SIGNATURE_HEADER: sign("another-secret", json.dumps(GOOD).encode())}),
    ("no prefix", {SIGNATURE_HEADER: sign(WEBHOOK_SECRET, json.dumps(GOOD).encode())[7:]}),
    ("sha1", {SIGNATURE_HEADER: "sha1=" + "0" * 40}),
    ("garbage", {SIGNATURE_HEADER: "sha256=zz"}),
]


@pytest.mark.parametrize(
    "headers", [c[1] for c in BAD_SIGNATURES], ids=[c[0] for c in BAD_SIGNATURES]
)
async def test_bad_or_missing_signature_is_401_and_stores_nothing(
    gateway: httpx.AsyncClient, engine: AsyncEngine, headers: dict[str, str]
) -> None:
    response = await gateway.post(HOOK, content=json.dumps(GOOD).encode(), headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert SIGNATURE_HEADER in response.json()["detail"]
    assert WEBHOOK_SECRET not in response.text
    assert await stored(engine) == (0, 0, 0)


async def test_signature_of_another_body_is_401(
    gateway: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body, signature = _tampered()
    response = await gateway.post(HOOK, content=body, headers={SIGNATURE_HEADER: signature})
    assert response.status_code == 401, response.text
    assert await stored(engine) == (0, 0, 0)


async def test_signature_is_checked_before_the_body_is_parsed(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post(HOOK, content=b"{not json")
    assert response.status_code == 401, response.text


async def test_signature_covers_the_raw_bytes(
    gateway: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Whitespace and key order as sent: the signature is over the bytes, not re-encoded JSON."""
    raw = b'{ "timestamp": "2025-03-01T12:00:00Z",\n  "text": "hi", "from": "x",' + (
        b' "channel": "whatsapp", "eventId": "raw-1" }'
    )
    response = await post_event(gateway, None, raw=raw)
    assert response.status_code == 200, response.text
    assert await stored(engine) == (1, 1, 1)


async def test_allow_unsigned_accepts_a_missing_signature_but_never_a_bad_one(
    api_settings: ApiSettings, engine: AsyncEngine
) -> None:
    settings = with_meta(api_settings, allow_unsigned=True)
    async with app_client(settings, engine) as lenient:
        unsigned = await post_event(lenient, inbound("evt-unsigned"), secret=None)
        assert unsigned.status_code == 200, unsigned.text
        signed = await post_event(lenient, inbound("evt-signed"))
        assert signed.status_code == 200, signed.text
        bad = await post_event(lenient, inbound("evt-bad"), secret="wrong-secret")
        assert bad.status_code == 401, bad.text
    assert await stored(engine) == (2, 1, 2)


async def test_unsigned_is_refused_by_default(
    gateway: httpx.AsyncClient, engine: AsyncEngine, api_settings: ApiSettings
) -> None:
    assert api_settings.meta.allow_unsigned is False
    response = await post_event(gateway, inbound(), secret=None)
    assert response.status_code == 401, response.text
    assert await stored(engine) == (0, 0, 0)


async def test_a_configured_secret_is_used(api_settings: ApiSettings, engine: AsyncEngine) -> None:
    settings = with_meta(api_settings, webhook_secret="a-production-secret")
    async with app_client(settings, engine) as strict:
        assert (await post_event(strict, inbound())).status_code == 401  # the dev default
        accepted = await post_event(strict, inbound(), secret="a-production-secret")
        assert accepted.status_code == 200, accepted.text


async def test_no_secret_needs_allow_unsigned(
    api_settings: ApiSettings, engine: AsyncEngine
) -> None:
    with pytest.raises(ValidationError, match="ALLOW_UNSIGNED"):
        MetaGatewaySettings(webhook_secret=None)
    with pytest.raises(ValidationError, match="ALLOW_UNSIGNED"):
        MetaGatewaySettings(webhook_secret="")
    settings = with_meta(api_settings, webhook_secret=None, allow_unsigned=True)
    async with app_client(settings, engine) as open_hook:
        assert (await post_event(open_hook, inbound(), secret=None)).status_code == 200
        assert (await post_event(open_hook, inbound(), secret="anything")).status_code == 200


def test_secret_and_flags_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYBOX_META__WEBHOOK_SECRET", "from-env")
    monkeypatch.setenv("RELAYBOX_META__ALLOW_UNSIGNED", "true")
    monkeypatch.setenv("RELAYBOX_META__VERIFY_TOKEN", "token-from-env")
    meta = ApiSettings().meta
    assert (meta.webhook_secret, meta.allow_unsigned, meta.verify_token) == (
        "from-env",
        True,
        "token-from-env",
    )


async def test_webhook_needs_no_bearer_token_but_the_inbox_does(
    gateway: httpx.AsyncClient,
) -> None:
    assert (await post_event(gateway, inbound())).status_code == 200
    assert (await gateway.get("/conversations")).status_code == 401


# --- the subscription handshake ---------------------------------------------------------------


async def test_handshake_echoes_the_challenge_as_text(
    gateway: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": api_settings.meta.verify_token,
        "hub.challenge": "1158201444",
    }
    response = await gateway.get(HOOK, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "1158201444"


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "c"},
        {"hub.mode": "unsubscribe", "hub.verify_token": "dev-mock-meta-verify-token"},
        {"hub.verify_token": "dev-mock-meta-verify-token", "hub.challenge": "c"},
        {"hub.mode": "subscribe", "hub.challenge": "c"},
        {},
    ],
    ids=["wrong token", "wrong mode", "no mode", "no token", "nothing"],
)
async def test_handshake_without_the_token_is_403(
    gateway: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await gateway.get(HOOK, params=params)
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert "dev-mock-meta-verify-token" not in response.text


async def test_handshake_without_a_challenge_is_400(
    gateway: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    params = {"hub.mode": "subscribe", "hub.verify_token": api_settings.meta.verify_token}
    response = await gateway.get(HOOK, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "hub.challenge"


# --- status events ----------------------------------------------------------------------------


async def outbound(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/messages/send", json={"channel": "whatsapp", "to": "+15550001", "text": "hi", **body}
    )
    assert response.status_code == 202, response.text
    message: dict[str, Any] = response.json()
    return message


async def record_sent(
    db: AsyncConnection | AsyncSession, message_id: str, provider_message_id: str
) -> str | None:
    """What the consumer does when the provider accepted a message: SENT + its id, then the
    pending status events, in one transaction (the caller's)."""
    await db.execute(
        text(
            "UPDATE messages SET status = 'SENT', provider_message_id = :p, sent_at = now(), "
            "attempts = attempts + 1 WHERE id = :id AND status IN ('PENDING', 'SENDING')"
        ),
        {"p": provider_message_id, "id": uuid.UUID(message_id)},
    )
    return await apply_status_events(db, provider_message_id)


async def sent_message(client: httpx.AsyncClient, engine: AsyncEngine, pm: str) -> dict[str, Any]:
    message = await outbound(client)
    async with engine.begin() as conn:
        assert await record_sent(conn, message["id"], pm) == "SENT"
    return message


async def message(client: httpx.AsyncClient, message_id: str) -> dict[str, Any]:
    response = await client.get(f"/messages/{message_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def pending_events(engine: AsyncEngine) -> int:
    return int(await scalar(engine, "SELECT count(*) FROM webhook_events WHERE applied_at IS NULL"))


async def test_status_events_move_the_message_forward(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    sent = await sent_message(client, engine, "pm-fwd")
    answer = await post_event(gateway, status_event("pm-fwd", "sent", seconds=1))
    assert answer.json()["status"] == "processed"
    assert (await message(client, sent["id"]))["status"] == "SENT"

    assert (await post_event(gateway, status_event("pm-fwd", "delivered", seconds=2))).is_success
    delivered = await message(client, sent["id"])
    assert delivered["status"] == "DELIVERED"
    assert datetime.fromisoformat(delivered["deliveredAt"]) == T0 + timedelta(seconds=2)
    assert delivered["readAt"] is None

    assert (await post_event(gateway, status_event("pm-fwd", "read", seconds=3))).is_success
    read = await message(client, sent["id"])
    assert read["status"] == "READ"
    assert datetime.fromisoformat(read["readAt"]) == T0 + timedelta(seconds=3)
    assert read["deliveredAt"] == delivered["deliveredAt"]
    assert read["sentAt"] is not None  # the consumer's, kept
    assert await pending_events(engine) == 0


async def test_a_late_delivered_after_read_never_downgrades(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    sent = await sent_message(client, engine, "pm-late")
    read = status_event("pm-late", "read", seconds=5)
    assert (await post_event(gateway, read)).json()["status"] == "processed"
    late = await post_event(gateway, status_event("pm-late", "delivered", seconds=4))
    assert late.json()["status"] == "processed"
    late_sent = await post_event(gateway, status_event("pm-late", "sent", seconds=3))
    assert late_sent.json()["status"] == "processed"
    duplicate = await post_event(gateway, read)
    assert duplicate.json()["status"] == "duplicate"

    detail = await message(client, sent["id"])
    assert detail["status"] == "READ"
    # a read implies delivered: filled from the read's time, kept when the late one comes
    assert datetime.fromisoformat(detail["deliveredAt"]) == T0 + timedelta(seconds=5)
    assert datetime.fromisoformat(detail["readAt"]) == T0 + timedelta(seconds=5)
    assert await scalar(engine, "SELECT count(*) FROM webhook_events") == 3
    assert await pending_events(engine) == 0


async def test_duplicate_status_events_change_nothing(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    sent = await sent_message(client, engine, "pm-dups")
    delivered = status_event("pm-dups", "delivered", seconds=1)
    answers = await asyncio.gather(*(post_event(gateway, delivered) for _ in range(10)))
    assert sorted(a.json()["status"] for a in answers) == ["duplicate"] * 9 + ["processed"]
    assert (await message(client, sent["id"]))["status"] == "DELIVERED"
    assert await scalar(engine, "SELECT count(*) FROM webhook_events") == 1


async def test_concurrent_status_events_end_at_the_highest(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    sent = await sent_message(client, engine, "pm-race")
    events = [
        status_event("pm-race", s, seconds=i)
        for i, s in enumerate(["sent", "delivered", "read"] * 3)
    ]
    answers = await asyncio.gather(*(post_event(gateway, e) for e in reversed(events)))
    assert {a.json()["status"] for a in answers} == {"processed"}
    assert (await message(client, sent["id"]))["status"] == "READ"
    assert await pending_events(engine) == 0


async def test_failed_is_terminal(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    sent = await sent_message(client, engine, "pm-failed")
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE messages SET status = 'FAILED', failed_at = now() WHERE id = :id"),
            {"id": uuid.UUID(sent["id"])},
        )
    response = await post_event(gateway, status_event("pm-failed", "delivered"))
    assert response.json()["status"] == "processed"
    detail = await message(client, sent["id"])
    assert detail["status"] == "FAILED"
    assert detail["deliveredAt"] is None
    assert await pending_events(engine) == 0


async def test_status_event_before_the_provider_id_is_recorded_waits_then_applies(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The provider's webhook won the race against the consumer recording SENT."""
    pending = await outbound(client)
    for status, seconds in (("delivered", 2), ("sent", 1)):
        response = await post_event(gateway, status_event("pm-early", status, seconds=seconds))
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "pending"
    assert (await message(client, pending["id"]))["status"] == "PENDING"
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT kind, provider_message_id, status, applied_at FROM webhook_events "
                    "ORDER BY id"
                )
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("status", "pm-early", "DELIVERED", None),
        ("status", "pm-early", "SENT", None),
    ]

    async with engine.begin() as conn:  # the consumer's transaction
        assert await record_sent(conn, pending["id"], "pm-early") == "DELIVERED"
    detail = await message(client, pending["id"])
    assert detail["status"] == "DELIVERED"
    assert detail["providerMessageId"] == "pm-early"
    assert datetime.fromisoformat(detail["deliveredAt"]) == T0 + timedelta(seconds=2)
    assert await pending_events(engine) == 0

    async with engine.begin() as conn:  # nothing left to apply: the status as it is
        assert await apply_status_events(conn, "pm-early") == "DELIVERED"
    read = await post_event(gateway, status_event("pm-early", "read", seconds=3))
    assert read.json()["status"] == "processed"
    assert (await message(client, pending["id"]))["status"] == "READ"


async def test_apply_status_events_with_a_session_and_an_unknown_id(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    pending = await outbound(client)
    await post_event(gateway, status_event("pm-session", "read", seconds=1))
    async with AsyncSession(engine) as session, session.begin():
        assert await apply_status_events(session, "pm-unknown") is None
        assert await apply_status_events(session, "pm-session") is None  # no message has it yet
        assert await record_sent(session, pending["id"], "pm-session") == "READ"
    assert (await message(client, pending["id"]))["status"] == "READ"
    assert await pending_events(engine) == 0


async def waiting_for_lock(engine: AsyncEngine, locktype: str = "advisory") -> None:
    """Until some backend waits for a lock of `locktype` (polled: no timing luck either way)."""
    for _ in range(1000):
        if await scalar(
            engine, "SELECT count(*) FROM pg_locks WHERE locktype = :t AND NOT granted", t=locktype
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"nobody ever waited for a {locktype} lock")


async def test_webhook_waits_for_a_consumer_that_is_recording_sent(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The consumer holds the status lock (SENT recorded, not committed): the webhook waits and
    then sees the message, instead of leaving its event pending forever."""
    pending = await outbound(client)
    async with engine.connect() as consumer:
        await consumer.begin()
        assert await record_sent(consumer, pending["id"], "pm-interleave") == "SENT"
        posting = asyncio.ensure_future(
            post_event(gateway, status_event("pm-interleave", "delivered"))
        )
        await waiting_for_lock(engine)
        assert not posting.done()
        await consumer.commit()
    response = await posting
    assert response.json()["status"] == "processed"
    assert (await message(client, pending["id"]))["status"] == "DELIVERED"
    assert await pending_events(engine) == 0


async def test_consumer_waits_for_a_webhook_that_is_recording_its_event(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The webhook's transaction holds the lock (event stored, no message yet, not committed):
    the consumer waits and then applies the event."""
    pending = await outbound(client)
    async with engine.connect() as webhook:
        await webhook.begin()
        await webhook.execute(
            text(
                "INSERT INTO webhook_events (provider, event_id, kind, provider_message_id, "
                "status, payload) VALUES ('mock-meta', 'evt-w', 'status', 'pm-w', 'READ', "
                "CAST(:payload AS jsonb))"
            ),
            {"payload": json.dumps(status_event("pm-w", "read", event_id="evt-w"))},
        )
        assert await apply_status_events(webhook, "pm-w") is None

        async def consume() -> str | None:
            async with engine.begin() as consumer:
                return await record_sent(consumer, pending["id"], "pm-w")

        consuming = asyncio.ensure_future(consume())
        await waiting_for_lock(engine)
        assert not consuming.done()
        await webhook.commit()
    assert await consuming == "READ"
    assert (await message(client, pending["id"]))["status"] == "READ"
    assert await pending_events(engine) == 0


async def test_webhook_and_a_consumer_holding_the_message_row_do_not_deadlock(
    gateway: httpx.AsyncClient, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A consumer transaction that already holds the row of a message whose provider id is known
    (and calls apply_status_events after): the webhook waits for the row before it takes the
    status lock, so the two never wait for each other in opposite orders."""
    sent = await sent_message(client, engine, "pm-held")
    async with engine.connect() as consumer:
        await consumer.begin()
        await consumer.execute(
            text("UPDATE messages SET updated_at = now() WHERE id = :id"),
            {"id": uuid.UUID(sent["id"])},
        )
        posting = asyncio.ensure_future(post_event(gateway, status_event("pm-held", "read")))
        await waiting_for_lock(engine, "transactionid")  # the webhook waits for the row
        assert await apply_status_events(consumer, "pm-held") == "SENT"
        await consumer.commit()
    response = await posting
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "processed"
    assert (await message(client, sent["id"]))["status"] == "READ"


# --- the shared timestamp parser --------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["", "soon", "1740830400000", "12:00", None, True, [], 1e20, float("nan")], ids=repr
)
def test_parse_provider_timestamp_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        parse_provider_timestamp(value)
