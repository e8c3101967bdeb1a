"""POST /send (alias /email/send): validation, the one-transaction write, idempotency, limit."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.auth import issue_token
from relaybox.api.emails.accept import IDEMPOTENCY_SCOPE
from relaybox.api.idempotency import lock_key
from relaybox.api.settings import ApiSettings, RateLimitSettings
from tests.support.clients import api_client as api

BODY: dict[str, Any] = {"to": "alice@example.com", "subject": "Hello", "text": "Hi Alice"}
PROBLEM = "application/problem+json"
CLIENT = "test-client"  # the subject of the `token` fixture


async def count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


async def rows(engine: AsyncEngine) -> tuple[int, int, int]:
    """(emails, outbox, idempotency_keys) row counts."""
    return (
        await count(engine, "emails"),
        await count(engine, "outbox"),
        await count(engine, "idempotency_keys"),
    )


def assert_problem(response: httpx.Response, status: int, field: str) -> dict[str, Any]:
    """An RFC 9457 answer with `status` whose `field` (and detail) name the input at fault."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    assert problem.get("field") == field, problem
    return problem


# --- the happy path -------------------------------------------------------------------------


async def test_send_writes_email_and_outbox_row_and_answers_202(
    client: httpx.AsyncClient, engine: AsyncEngine, api_settings: ApiSettings
) -> None:
    response = await client.post("/send", json=BODY)
    assert response.status_code == 202, response.text
    assert response.headers["content-type"].startswith("application/json")
    accepted = response.json()
    assert set(accepted) == {"id", "status", "createdAt"}
    assert accepted["status"] == "PENDING"
    email_id = uuid.UUID(accepted["id"])
    assert datetime.fromisoformat(accepted["createdAt"]).tzinfo is not None

    async with engine.connect() as conn:
        email = (
            await conn.execute(
                text(
                    "SELECT tenant_id, to_address, from_address, subject, text_body, html_body, "
                    "status, attempts FROM emails WHERE id = :id"
                ),
                {"id": email_id},
            )
        ).one()
        outbox = (
            await conn.execute(text("SELECT routing_key, payload, destination FROM outbox"))
        ).all()
    assert tuple(email) == (
        CLIENT,
        "alice@example.com",
        api_settings.email_from,
        "Hello",
        "Hi Alice",
        None,
        "PENDING",
        0,
    )
    assert [tuple(r) for r in outbox] == [("email.send", {"id": str(email_id)}, "work")]
    assert await rows(engine) == (1, 1, 0)  # no key, nothing stored for idempotency


async def test_created_at_reads_the_same_in_the_answer_the_log_and_the_detail(
    client: httpx.AsyncClient,
) -> None:
    accepted = (await client.post("/send", json=BODY)).json()
    logged = (await client.get("/logs/email")).json()["data"][0]
    detail = (await client.get(f"/emails/{accepted['id']}")).json()
    assert logged["id"] == detail["id"] == accepted["id"]
    assert logged["createdAt"] == detail["createdAt"] == accepted["createdAt"]


async def test_alias_route_email_send_is_the_same_handler(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await client.post("/email/send", json=BODY)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "PENDING"
    bad = await client.post("/email/send", json={**BODY, "to": "nope"})
    assert_problem(bad, 400, "to")
    assert await rows(engine) == (1, 1, 0)


async def test_send_with_from_html_only_and_both_bodies(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    html_only = {"to": "bob@example.com", "subject": "s", "html": "<p>hi</p>", "from": "x@y.org"}
    both = {**BODY, "html": "<b>Hi</b>"}
    for body in (html_only, both):
        response = await client.post("/send", json=body)
        assert response.status_code == 202, response.text
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT to_address, from_address, text_body, html_body FROM emails")
            )
        ).all()
    assert sorted(tuple(r) for r in stored) == sorted(
        [
            ("bob@example.com", "x@y.org", None, "<p>hi</p>"),
            ("alice@example.com", "relaybox@localhost", "Hi Alice", "<b>Hi</b>"),
        ]
    )


async def test_body_is_an_alias_of_text(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """The email HTTP API contract and common clients name the plain-text field `body`."""
    aliased = {"to": "carol@example.com", "subject": "s", "body": "Hi Carol"}
    for path in ("/send", "/email/send"):
        response = await client.post(path, json=aliased)
        assert response.status_code == 202, response.text
        detail = await client.get(f"/emails/{response.json()['id']}")
        assert (detail.json()["text"], detail.json()["html"]) == ("Hi Carol", None)
    with_null_text = await client.post("/send", json={**aliased, "text": None})
    assert with_null_text.status_code == 202, with_null_text.text
    async with engine.connect() as conn:
        bodies = (await conn.execute(text("SELECT text_body FROM emails"))).scalars().all()
    assert bodies == ["Hi Carol"] * 3


async def test_limits_are_inclusive(client: httpx.AsyncClient) -> None:
    body = {**BODY, "subject": "s" * 255, "text": "t" * 10_000, "html": "h" * 10_000}
    response = await client.post("/send", json=body)
    assert response.status_code == 202, response.text


# --- validation -----------------------------------------------------------------------------

BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("to missing", {"subject": "s", "text": "t"}, "to"),
    ("to invalid", {**BODY, "to": "not-an-address"}, "to"),
    ("to no domain", {**BODY, "to": "alice@"}, "to"),
    ("to display name", {**BODY, "to": "Alice <alice@example.com>"}, "to"),
    ("to null", {**BODY, "to": None}, "to"),
    ("to number", {**BODY, "to": 5}, "to"),
    ("to list", {**BODY, "to": ["alice@example.com"]}, "to"),
    ("from invalid", {**BODY, "from": "nobody"}, "from"),
    ("from header injection", {**BODY, "from": "a@b.org\r\nBcc: c@d.org"}, "from"),
    ("subject missing", {"to": "alice@example.com", "text": "t"}, "subject"),
    ("subject empty", {**BODY, "subject": ""}, "subject"),
    ("subject blank", {**BODY, "subject": "   "}, "subject"),
    ("subject 256 chars", {**BODY, "subject": "s" * 256}, "subject"),
    ("subject newline", {**BODY, "subject": "Hello\nBcc: x@example.com"}, "subject"),
    ("subject carriage return", {**BODY, "subject": "Hello\rthere"}, "subject"),
    ("subject control char", {**BODY, "subject": "Hello\x00"}, "subject"),
    ("subject number", {**BODY, "subject": 42}, "subject"),
    ("subject object", {**BODY, "subject": {"a": 1}}, "subject"),
    ("text 10,001 chars", {**BODY, "text": "t" * 10_001}, "text"),
    ("text empty", {**BODY, "text": ""}, "text"),
    ("text NUL", {**BODY, "text": "a\x00b"}, "text"),
    ("text list", {**BODY, "text": ["a"]}, "text"),
    ("html 10,001 chars", {**BODY, "html": "h" * 10_001}, "html"),
    ("html NUL", {**BODY, "html": "<p>\x00</p>"}, "html"),
    ("html boolean", {**BODY, "html": True}, "html"),
    ("neither text nor html", {"to": "alice@example.com", "subject": "s"}, "html"),
    ("both null", {"to": "alice@example.com", "subject": "s", "text": None, "html": None}, "html"),
    ("text and its alias body", {**BODY, "body": "Hi again"}, "body"),
    ("body 10,001 chars", {"to": "a@example.com", "subject": "s", "body": "b" * 10_001}, "body"),
    ("body NUL", {"to": "a@example.com", "subject": "s", "body": "a\x00"}, "body"),
    ("body null, no html", {"to": "a@example.com", "subject": "s", "body": None}, "html"),
    ("to special-use domain", {**BODY, "to": "alice@host.test"}, "to"),
    ("to 255 chars", {**BODY, "to": "a" * 64 + "@" + "b" * 186 + ".com"}, "to"),
    ("unknown extra field", {**BODY, "bcc": "eve@example.com"}, "bcc"),
    ("array instead of object", [BODY], "body"),  # type: ignore[list-item]
    ("string instead of object", "hello", "body"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(
    ("body", "field"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
)
async def test_bad_field_is_a_400_problem_naming_the_field(
    client: httpx.AsyncClient, engine: AsyncEngine, body: Any, field: str
) -> None:
    response = await client.post("/send", json=body)
    problem = assert_problem(response, 400, field)
    assert field in problem["detail"]
    assert problem["errors"][0]["field"] == field
    assert "Value error" not in problem["detail"]
    assert await rows(engine) == (0, 0, 0)


async def test_every_bad_field_is_reported(client: httpx.AsyncClient) -> None:
    response = await client.post("/send", json={"to": "x", "subject": "", "text": "t" * 10_001})
    assert response.status_code == 400
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"to", "subject", "text"}


@pytest.mark.parametrize(
    "raw", [b"{not json", b'{"to": "a@b.org",', b"\xff\xfe", b"null"], ids=repr
)
async def test_non_json_body_is_a_400_problem_naming_the_body(
    client: httpx.AsyncClient, engine: AsyncEngine, raw: bytes
) -> None:
    response = await client.post("/send", content=raw, headers={"Content-Type": "application/json"})
    assert_problem(response, 400, "body")
    assert await rows(engine) == (0, 0, 0)


async def test_empty_body_is_a_400_problem_naming_the_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/send", content=b"", headers={"Content-Type": "application/json"})
    problem = assert_problem(response, 400, "body")
    assert "JSON object" in problem["detail"]


# --- Idempotency-Key ------------------------------------------------------------------------


async def test_same_key_same_body_replays_the_stored_answer(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await client.post("/send", json=BODY, headers=headers)
    assert first.status_code == 202, first.text
    again = await client.post("/send", json=BODY, headers=headers)
    reordered = await client.post("/send", json=dict(reversed(BODY.items())), headers=headers)
    via_alias = await client.post("/email/send", json=BODY, headers=headers)
    for replay in (again, reordered, via_alias):
        assert replay.status_code == 202, replay.text
        assert replay.json() == first.json()
    assert await rows(engine) == (1, 1, 1)


async def test_same_key_different_body_is_422_and_writes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = {"Idempotency-Key": "order-43"}
    assert (await client.post("/send", json=BODY, headers=headers)).status_code == 202
    response = await client.post("/send", json={**BODY, "text": "other"}, headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert "Idempotency-Key" in response.json()["detail"]
    assert await rows(engine) == (1, 1, 1)


async def test_key_in_flight_is_409_then_the_retry_succeeds(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Another transaction holds the key's advisory lock, as a first request still running does."""
    key = "order-44"
    async with engine.connect() as holder:
        await holder.begin()
        await holder.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": lock_key(CLIENT, IDEMPOTENCY_SCOPE, key)},
        )
        response = await client.post("/send", json=BODY, headers={"Idempotency-Key": key})
        assert response.status_code == 409, response.text
        assert response.headers["content-type"].startswith(PROBLEM)
        assert "Idempotency-Key" in response.json()["detail"]
        await holder.rollback()  # the transaction ends: its xact lock is gone
    assert await rows(engine) == (0, 0, 0)
    retried = await client.post("/send", json=BODY, headers={"Idempotency-Key": key})
    assert retried.status_code == 202, retried.text
    assert await rows(engine) == (1, 1, 1)


async def test_lock_of_another_key_or_client_does_not_block(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    async with engine.connect() as holder:
        await holder.begin()
        for name in (lock_key(CLIENT, IDEMPOTENCY_SCOPE, "other"), lock_key("x", "y", "k")):
            await holder.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": name}
            )
        response = await client.post("/send", json=BODY, headers={"Idempotency-Key": "k"})
        assert response.status_code == 202, response.text
        await holder.rollback()


async def test_concurrent_duplicates_make_one_email(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Whatever the interleaving: each answer is the one stored answer or a 409, one row."""
    headers = {"Idempotency-Key": "burst"}
    answers = await asyncio.gather(
        *(client.post("/send", json=BODY, headers=headers) for _ in range(5))
    )
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {202, 409}, [a.text for a in answers]
    assert 202 in statuses
    assert len({a.json()["id"] for a in answers if a.status_code == 202}) == 1
    assert await rows(engine) == (1, 1, 1)


async def test_same_key_of_another_client_is_independent(
    client: httpx.AsyncClient, engine: AsyncEngine, api_settings: ApiSettings
) -> None:
    headers = {"Idempotency-Key": "shared-key"}
    mine = await client.post("/send", json=BODY, headers=headers)
    other_token = issue_token(api_settings, "other-client")
    theirs = await client.post(
        "/send",
        json={**BODY, "text": "different"},
        headers={**headers, "Authorization": f"Bearer {other_token}"},
    )
    assert mine.status_code == theirs.status_code == 202, theirs.text
    assert mine.json()["id"] != theirs.json()["id"]
    assert await rows(engine) == (2, 2, 2)


async def test_expired_key_is_used_afresh(
    client: httpx.AsyncClient, engine: AsyncEngine, api_settings: ApiSettings
) -> None:
    headers = {"Idempotency-Key": "old-key"}
    first = (await client.post("/send", json=BODY, headers=headers)).json()
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE idempotency_keys SET created_at = now() - make_interval(hours => :h)"),
            {"h": api_settings.idempotency_ttl_h + 1},
        )
    second = await client.post("/send", json={**BODY, "text": "new"}, headers=headers)
    assert second.status_code == 202, second.text
    assert second.json()["id"] != first["id"]
    assert await rows(engine) == (2, 2, 1)
    replay = await client.post("/send", json={**BODY, "text": "new"}, headers=headers)
    assert replay.json() == second.json()


@pytest.mark.parametrize(
    "key",
    [b"", b"has space", b"x" * 256, b"caf\xe9", b"tab\there"],
    ids=["empty", "space", "256 chars", "non-ascii", "tab"],
)
async def test_malformed_key_is_a_400_naming_the_header(
    client: httpx.AsyncClient, engine: AsyncEngine, key: bytes
) -> None:
    response = await client.post("/send", json=BODY, headers={b"Idempotency-Key": key})
    problem = assert_problem(response, 400, "Idempotency-Key")
    assert "Idempotency-Key" in problem["detail"]
    assert await rows(engine) == (0, 0, 0)


async def test_key_of_255_visible_chars_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/send", json=BODY, headers={"Idempotency-Key": "~" * 255})
    assert response.status_code == 202, response.text


# --- per-client rate limit ------------------------------------------------------------------


async def test_rate_limit_is_per_client_with_retry_after(
    api_settings: ApiSettings, engine: AsyncEngine, token: str
) -> None:
    settings = api_settings.model_copy(update={"rate_limit": RateLimitSettings(send_per_minute=2)})
    other = issue_token(settings, "other-client")
    async with api(settings, engine, token) as limited:
        assert (await limited.post("/send", json=BODY)).status_code == 202
        assert (await limited.post("/email/send", json=BODY)).status_code == 202  # same budget
        refused = await limited.post("/send", json=BODY)
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"].startswith(PROBLEM)
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        assert refused.json()["title"] == "Too Many Requests"
        assert (await limited.post("/email/send", json=BODY)).status_code == 429
        # reading is not rate limited, and another client has its own budget
        assert (await limited.get("/logs/email")).status_code == 200
        theirs = await limited.post(
            "/send", json=BODY, headers={"Authorization": f"Bearer {other}"}
        )
        assert theirs.status_code == 202, theirs.text
    assert await count(engine, "emails") == 3
