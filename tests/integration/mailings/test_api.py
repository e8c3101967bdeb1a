"""Bulk mailings API: the upload (chunks, outbox, idempotency, re-upload, refusals), progress
views computed from recipients and their emails, entries and errors, and the controls."""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.auth import issue_token
from relaybox.api.settings import (
    DEFAULT_MAILING_BODY,
    DEFAULT_MAILING_SUBJECT,
    ApiSettings,
    MailingSettings,
    RateLimitSettings,
)
from tests.support.clients import api_client

FIXTURE = Path(__file__).resolve().parents[4] / "shared/fixtures/mailing_list.csv"
PROBLEM = "application/problem+json"
CLIENT = "test-client"  # the subject of the `token` fixture
DETAIL_KEYS = {
    "id",
    "status",
    "subject",
    "fileName",
    "fileBytes",
    "fileSha256",
    "counts",
    "progress",
    "error",
    "createdAt",
    "startedAt",
    "finishedAt",
    "eta",
    "etaSeconds",
    "links",
}
COUNT_KEYS = {"rows", "valid", "invalid", "duplicates", "pending", "sent", "failed", "cancelled"}


@asynccontextmanager
async def api(
    settings: ApiSettings, engine: AsyncEngine, token: str, **mailings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """Another app on the test's engine, with these mailing settings."""
    configured = settings.model_copy(update={"mailings": MailingSettings(**mailings)})
    async with api_client(configured, engine, token) as client:
        yield client


async def upload(
    client: httpx.AsyncClient,
    content: bytes,
    *,
    name: str = "list.csv",
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.post(
        "/mailings",
        files={"file": (name, content, "text/csv")},
        data=form or {},
        headers=headers or {},
    )


async def stored(engine: AsyncEngine) -> tuple[int, int, int]:
    """(mailings, mailing_chunks, outbox) row counts."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM mailings), "
                    "(SELECT count(*) FROM mailing_chunks), (SELECT count(*) FROM outbox)"
                )
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


def assert_problem(response: httpx.Response, status: int, field: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["detail"]
    assert problem.get("field") == field, problem
    return problem


# --- simulating the parser and the dispatcher -------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    email: str
    status: str = "PENDING"  # mailing_recipients.status
    email_status: str | None = None  # the linked emails row, if dispatched
    error: str | None = None


async def parsed(
    engine: AsyncEngine,
    mailing_id: str,
    recipients: list[Recipient],
    *,
    status: str = "RUNNING",
    invalid: int = 0,
    duplicates: int = 0,
) -> dict[str, uuid.UUID]:
    """Write what the parser and the dispatcher would: counts, recipients, their emails.
    Returns the email id of each dispatched recipient by address."""
    email_ids: dict[str, uuid.UUID] = {}
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE mailings SET status = :s, rows_total = :rows, valid_count = :valid, "
                "invalid_count = :invalid, duplicate_count = :dup, started_at = now() "
                "WHERE id = :id"
            ),
            {
                "id": mailing_id,
                "s": status,
                "rows": len(recipients) + invalid + duplicates,
                "valid": len(recipients),
                "invalid": invalid,
                "dup": duplicates,
            },
        )
        for number, r in enumerate(recipients, start=2):
            email_id = None
            if r.email_status is not None:
                email_id = email_ids[r.email] = uuid.uuid4()
                await conn.execute(
                    text(
                        "INSERT INTO emails (id, tenant_id, to_address, from_address, subject, "
                        "text_body, status, last_error, sent_at, failed_at) VALUES (:id, :c, :to, "
                        "'relaybox@localhost', 'Complete your registration', 'token abc', "
                        "CAST(:s AS varchar), :err, CASE WHEN CAST(:s AS varchar) = 'SENT' "
                        "THEN now() END, CASE WHEN CAST(:s AS varchar) = 'FAILED' THEN now() END)"
                    ),
                    {
                        "id": email_id,
                        "c": CLIENT,
                        "to": r.email,
                        "s": r.email_status,
                        "err": r.error,
                    },
                )
            await conn.execute(
                text(
                    "INSERT INTO mailing_recipients (mailing_id, row_number, email, email_key, "
                    "status, email_id, token_hash, dispatched_at) "
                    "VALUES (:m, :n, :e, :key, :s, :eid, :hash, :at)"
                ),
                {
                    "m": mailing_id,
                    "n": number,
                    "e": r.email,
                    "key": r.email.lower(),
                    "s": r.status,
                    "eid": email_id,
                    "hash": None if email_id is None else "f" * 64,
                    "at": None if email_id is None else datetime.now(UTC),
                },
            )
    return email_ids


MIXED = [
    Recipient("sent@example.com", "QUEUED", "SENT"),
    Recipient("failed@example.com", "QUEUED", "FAILED", "550 mailbox unavailable"),
    Recipient("queued@example.com", "QUEUED", "PENDING"),
    Recipient("sending@example.com", "QUEUED", "SENDING"),
    Recipient("waiting@example.com"),
    Recipient("dropped@example.com", "CANCELLED"),
]


async def new_mailing(client: httpx.AsyncClient, content: bytes | None = None) -> str:
    response = await upload(client, content or f"email\n{uuid.uuid4().hex}@x.com\n".encode())
    assert response.status_code == 202, response.text
    mailing_id: str = response.json()["id"]
    return mailing_id


# --- the upload -------------------------------------------------------------------------------


async def test_upload_stores_the_file_in_chunks_with_one_outbox_row(
    api_settings: ApiSettings, engine: AsyncEngine, token: str
) -> None:
    content = FIXTURE.read_bytes()
    async with api(api_settings, engine, token, chunk_bytes=1024) as client:
        response = await upload(client, content, name="mailing_list.csv")
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == DETAIL_KEYS
    mailing_id = body["id"]
    assert body["status"] == "PARSING"
    assert body["counts"] == dict.fromkeys(COUNT_KEYS, 0)
    assert body["progress"] is None
    assert body["eta"] is None and body["etaSeconds"] is None
    assert body["links"] == {
        "self": f"/mailings/{mailing_id}",
        "entries": f"/mailings/{mailing_id}/entries",
        "errors": f"/mailings/{mailing_id}/errors",
    }
    assert body["fileName"] == "mailing_list.csv"
    assert body["fileBytes"] == len(content)
    assert body["fileSha256"] == hashlib.sha256(content).hexdigest()
    assert body["subject"] == DEFAULT_MAILING_SUBJECT

    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT tenant_id, status, subject, body_template, file_name, file_sha256, "
                    "file_bytes FROM mailings WHERE id = :id"
                ),
                {"id": mailing_id},
            )
        ).one()
        chunks = (
            await conn.execute(
                text("SELECT seq, data FROM mailing_chunks WHERE mailing_id = :id ORDER BY seq"),
                {"id": mailing_id},
            )
        ).all()
        outbox = (
            await conn.execute(text("SELECT routing_key, payload, destination FROM outbox"))
        ).all()
    assert tuple(row) == (
        CLIENT,
        "PARSING",
        DEFAULT_MAILING_SUBJECT,
        DEFAULT_MAILING_BODY,
        "mailing_list.csv",
        hashlib.sha256(content).hexdigest(),
        len(content),
    )
    assert [c.seq for c in chunks] == list(range(math.ceil(len(content) / 1024)))
    assert all(len(c.data) == 1024 for c in chunks[:-1])
    assert b"".join(c.data for c in chunks) == content
    assert [tuple(o) for o in outbox] == [("mailing.parse", {"id": mailing_id}, "work")]


async def test_upload_keeps_subject_and_body(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    form = {"subject": "Verify your account", "body": "Hello! Your code: {token}. {name} stays."}
    response = await upload(client, FIXTURE.read_bytes(), form=form)
    assert response.status_code == 202, response.text
    assert response.json()["subject"] == "Verify your account"
    async with engine.connect() as conn:
        template = await conn.scalar(text("SELECT body_template FROM mailings"))
    assert template == form["body"]


async def test_idempotency_key_replays_the_first_answer(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    key = {"Idempotency-Key": "mailing-1"}
    first = await upload(client, FIXTURE.read_bytes(), headers=key)
    again = await upload(client, FIXTURE.read_bytes(), headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert await stored(engine) == (1, 1, 1)

    other = await upload(client, FIXTURE.read_bytes(), headers=key, form={"subject": "Other"})
    assert_problem(other, 422, None)
    assert await stored(engine) == (1, 1, 1)


async def test_reupload_within_the_window_answers_the_same_mailing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    first = await upload(client, FIXTURE.read_bytes())
    again = await upload(client, FIXTURE.read_bytes(), name="renamed.csv")
    assert first.status_code == 202
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert await stored(engine) == (1, 1, 1)  # no second mailing, chunk or outbox row

    other_body = await upload(client, FIXTURE.read_bytes(), form={"body": "Code: {token}"})
    assert other_body.status_code == 202
    assert other_body.json()["id"] != first.json()["id"]
    assert await stored(engine) == (2, 2, 2)


async def test_reupload_after_cancel_or_outside_the_window_is_a_new_mailing(
    api_settings: ApiSettings, engine: AsyncEngine, token: str, client: httpx.AsyncClient
) -> None:
    first = (await upload(client, FIXTURE.read_bytes())).json()["id"]
    assert (await client.post(f"/mailings/{first}/cancel")).status_code == 200
    second = await upload(client, FIXTURE.read_bytes())
    assert second.status_code == 202
    async with api(api_settings, engine, token, reupload_window_s=0) as no_window:
        third = await upload(no_window, FIXTURE.read_bytes())
    assert third.status_code == 202
    assert len({first, second.json()["id"], third.json()["id"]}) == 3
    assert (await stored(engine))[2] == 3


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"


@pytest.mark.parametrize(
    ("content", "form", "status", "field"),
    [
        pytest.param(b"", {}, 400, "file", id="empty"),
        pytest.param(b"\n \n\r\n", {}, 400, "file", id="blank"),
        pytest.param(PNG, {}, 415, "file", id="binary"),
        pytest.param(bytes(range(1, 32)) * 40, {}, 415, "file", id="control-characters"),
        pytest.param("email\nä@x.com\n".encode("utf-16"), {}, 415, "file", id="utf-16"),
        pytest.param(b"name,phone\nAlice,123\n", {}, 400, "file", id="no-email-column"),
        pytest.param(b"alice@x.com,Alice\n", {}, 400, "file", id="headerless-columns"),
        pytest.param(b"Email\n\n", {}, 400, "file", id="header-only"),
        pytest.param(b"email\na@x.com\n", {"body": "no placeholder"}, 400, "body", id="body"),
        pytest.param(b"email\na@x.com\n", {"subject": "s" * 256}, 400, "subject", id="long"),
        pytest.param(b"email\na@x.com\n", {"subject": "a\nb"}, 400, "subject", id="two-lines"),
        pytest.param(b"email\na@x.com\n", {"subject": "   "}, 400, "subject", id="blank-subject"),
    ],
)
async def test_bad_uploads_are_refused_with_nothing_stored(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    content: bytes,
    form: dict[str, str],
    status: int,
    field: str,
) -> None:
    assert_problem(await upload(client, content, form=form), status, field)
    assert await stored(engine) == (0, 0, 0)


async def test_missing_file_part_is_400(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    only_fields = await client.post("/mailings", files={"subject": (None, "Hi")})
    assert_problem(only_fields, 400, "file")
    file_as_text = await client.post("/mailings", files={"file": (None, "email\na@x.com")})
    assert_problem(file_as_text, 400, "file")
    not_multipart = await client.post("/mailings", json={"file": "email\na@x.com"})
    assert not_multipart.status_code == 400, not_multipart.text
    assert await stored(engine) == (0, 0, 0)


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00\x00\x00\x00"


async def test_binary_file_with_null_subject_and_body_is_a_4xx(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Found by the fuzzer: a PNG `file` sent as a plain form field (no filename), with `subject`
    and `body` of "null", answered 500 (Litestar's form parser raised UnicodeDecodeError)."""
    form = {"subject": (None, "null"), "body": (None, "null")}
    plain_field = await client.post("/mailings", files={"file": (None, PNG), **form})
    assert_problem(plain_field, 400, None)
    as_a_file = await client.post("/mailings", files={"file": ("file.png", PNG), **form})
    assert_problem(as_a_file, 400, "body")  # "null" holds no {token}
    assert_problem(await client.post("/mailings", files={"file": ("f.png", PNG)}), 415, "file")
    binary_subject = await client.post(  # (before the file: Litestar would leave it open)
        "/mailings", files={"subject": (None, PNG), "file": ("list.csv", b"email\na@x.com\n")}
    )
    assert_problem(binary_subject, 400, None)
    assert await stored(engine) == (0, 0, 0)


async def test_file_over_max_file_bytes_is_413_with_nothing_stored(
    api_settings: ApiSettings, engine: AsyncEngine, token: str
) -> None:
    content = FIXTURE.read_bytes()
    async with api(api_settings, engine, token, max_file_bytes=1000, chunk_bytes=1024) as client:
        problem = assert_problem(await upload(client, content), 413, "file")
        assert problem["maxBytes"] == 1000
        # A body well past the limit is refused by the framework before it is read.
        huge = b"email\n" + b"someone@example.com\n" * 60_000
        assert (await upload(client, huge)).status_code == 413
        assert (await upload(client, content[:1000])).status_code == 202  # exactly the limit
    assert await stored(engine) == (1, 1, 1)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(codecs.BOM_UTF8 + "Email,Name\nzoë@x.com,Zoë\n".encode(), id="utf-8-bom"),
        pytest.param("email,name\njose@x.com,José\n".encode("latin-1"), id="latin-1"),
        pytest.param(codecs.BOM_UTF8 + "email\nrené@x.fr\n".encode("cp1252"), id="bom-cp1252"),
        pytest.param(b"a@x.com,\nb@x.com,,\n", id="trailing-empty-cells"),
        pytest.param(b"a@x.com\nb@x.com\nnot-an-address\n", id="headerless-single-column"),
        pytest.param(b"a@x.com", id="one-address-no-newline"),
        pytest.param(b'"id","E-Mail"," EMAIL "\r\n1,,a@x.com\r\n', id="quoted-crlf"),
    ],
)
async def test_text_variants_are_accepted(
    client: httpx.AsyncClient, engine: AsyncEngine, content: bytes
) -> None:
    response = await upload(client, content)
    assert response.status_code == 202, response.text
    assert response.json()["fileBytes"] == len(content)
    assert await stored(engine) == (1, 1, 1)


async def test_sending_needs_the_mailing_send_scope(
    api_settings: ApiSettings, engine: AsyncEngine
) -> None:
    reader = issue_token(api_settings, CLIENT, scopes=("mailing:read",))
    async with api(api_settings, engine, reader) as client:
        assert (await upload(client, FIXTURE.read_bytes())).status_code == 403
        assert (await client.get("/mailings")).status_code == 200
    assert await stored(engine) == (0, 0, 0)


async def test_upload_is_rate_limited(api_settings: ApiSettings, engine: AsyncEngine) -> None:
    settings = api_settings.model_copy(update={"rate_limit": RateLimitSettings(send_per_minute=1)})
    async with api(settings, engine, issue_token(settings, CLIENT)) as client:
        assert (await upload(client, b"email\na@x.com\n")).status_code == 202
        limited = await upload(client, b"email\nb@x.com\n")
    assert limited.status_code == 429
    assert "Retry-After" in limited.headers


async def test_a_file_spooled_to_disk_is_stored_whole(
    api_settings: ApiSettings, engine: AsyncEngine, token: str
) -> None:
    content = b"email\n" + b"".join(f"user{i}@example.com\n".encode() for i in range(80_000))
    assert len(content) > 1024 * 1024  # past Litestar's in-memory spool
    async with api(api_settings, engine, token, chunk_bytes=256 * 1024) as client:
        response = await upload(client, content)
    assert response.status_code == 202, response.text
    async with engine.connect() as conn:
        data = await conn.scalar(
            text("SELECT string_agg(data, ''::bytea ORDER BY seq) FROM mailing_chunks")
        )
    assert data == content
    assert (await stored(engine))[1] == math.ceil(len(content) / (256 * 1024))


async def test_concurrent_uploads_of_one_file_make_one_mailing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    content = FIXTURE.read_bytes()
    first, second = await asyncio.gather(upload(client, content), upload(client, content))
    assert sorted((first.status_code, second.status_code)) == [200, 202]
    assert first.json()["id"] == second.json()["id"]
    assert await stored(engine) == (1, 1, 1)


# --- progress ---------------------------------------------------------------------------------


async def test_detail_counts_recipients_by_their_email_state(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    mailing_id = await new_mailing(client)
    await parsed(engine, mailing_id, MIXED, invalid=3, duplicates=1)
    before = datetime.now().astimezone()
    response = await client.get(f"/mailings/{mailing_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == DETAIL_KEYS
    assert body["status"] == "RUNNING"
    assert body["counts"] == {
        "rows": 10,
        "valid": 6,
        "invalid": 3,
        "duplicates": 1,
        "pending": 3,  # queued (email PENDING), sending, waiting
        "sent": 1,
        "failed": 1,
        "cancelled": 1,
    }
    assert body["progress"] == 0.5
    assert body["etaSeconds"] == 30  # 3 pending at 0.1/s
    eta = datetime.fromisoformat(body["eta"])
    assert before + timedelta(seconds=29) <= eta <= before + timedelta(seconds=40)
    assert body["startedAt"] is not None and body["finishedAt"] is None


async def test_list_is_newest_first_with_status_filter_and_paging(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ids = [await new_mailing(client) for _ in range(3)]
    await parsed(engine, ids[1], MIXED)
    page = (await client.get("/mailings", params={"limit": 2})).json()
    assert [m["id"] for m in page["data"]] == [ids[2], ids[1]]
    assert page["meta"]["total"] == 3 and page["meta"]["page"] == 1
    assert set(page["data"][0]) == DETAIL_KEYS
    assert page["data"][1]["counts"]["sent"] == 1
    rest = (await client.get("/mailings", params={"cursor": page["meta"]["nextCursor"]})).json()
    assert [m["id"] for m in rest["data"]] == [ids[0]]
    assert rest["meta"]["nextCursor"] is None
    second = (await client.get("/mailings", params={"limit": 2, "page": 2})).json()
    assert [m["id"] for m in second["data"]] == [ids[0]]
    running = (await client.get("/mailings", params={"status": "RUNNING"})).json()
    assert [m["id"] for m in running["data"]] == [ids[1]]
    assert running["meta"]["total"] == 1
    assert (await client.get("/mailings", params={"status": "NOPE"})).status_code == 400


async def test_entries_page_in_file_order_without_tokens(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    mailing_id = await new_mailing(client)
    await parsed(engine, mailing_id, MIXED)
    url = f"/mailings/{mailing_id}/entries"
    first = await client.get(url, params={"limit": 4})
    assert first.status_code == 200, first.text
    page = first.json()
    assert "token" not in first.text.lower() and "f" * 64 not in first.text
    assert [set(e) for e in page["data"]] == [
        {"rowNumber", "email", "status", "sentAt", "failedAt", "error"}
    ] * 4
    assert [(e["rowNumber"], e["status"]) for e in page["data"]] == [
        (2, "SENT"),
        (3, "FAILED"),
        (4, "PENDING"),
        (5, "PENDING"),
    ]
    assert page["data"][0]["sentAt"] is not None
    assert page["data"][1]["error"] == "550 mailbox unavailable"
    assert page["data"][1]["failedAt"] is not None
    assert page["meta"] == {"limit": 4, "nextCursor": page["meta"]["nextCursor"]}
    rest = (await client.get(url, params={"cursor": page["meta"]["nextCursor"]})).json()
    assert [(e["email"], e["status"]) for e in rest["data"]] == [
        ("waiting@example.com", "PENDING"),
        ("dropped@example.com", "CANCELLED"),
    ]
    assert rest["meta"]["nextCursor"] is None

    async def only(status: str) -> list[str]:
        data = (await client.get(url, params={"status": status})).json()["data"]
        return [e["email"] for e in data]

    assert await only("PENDING") == [
        "queued@example.com",
        "sending@example.com",
        "waiting@example.com",
    ]
    assert await only("SENT") == ["sent@example.com"]
    assert await only("FAILED") == ["failed@example.com"]
    assert await only("CANCELLED") == ["dropped@example.com"]
    assert_problem(await client.get(url, params={"cursor": "nonsense"}), 400, "cursor")
    assert (await client.get(url, params={"status": "sent-ish"})).status_code == 400


async def test_errors_list_invalid_rows(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    mailing_id = await new_mailing(client)
    async with engine.begin() as conn:
        for number, value in ((3, "invalid-email"), (6, "not-an-email"), (9, "@domain.com")):
            await conn.execute(
                text(
                    "INSERT INTO mailing_errors (mailing_id, row_number, raw_value, reason) "
                    "VALUES (:m, :n, :v, 'not a valid email address')"
                ),
                {"m": mailing_id, "n": number, "v": value},
            )
    url = f"/mailings/{mailing_id}/errors"
    page = (await client.get(url, params={"limit": 2})).json()
    assert page["data"] == [
        {"rowNumber": 3, "value": "invalid-email", "reason": "not a valid email address"},
        {"rowNumber": 6, "value": "not-an-email", "reason": "not a valid email address"},
    ]
    rest = (await client.get(url, params={"cursor": page["meta"]["nextCursor"]})).json()
    assert [e["rowNumber"] for e in rest["data"]] == [9]
    assert rest["meta"] == {"limit": 50, "nextCursor": None}


# --- controls ---------------------------------------------------------------------------------


async def test_pause_and_resume(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    parsing = await new_mailing(client)
    paused = await client.post(f"/mailings/{parsing}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "PAUSED"
    problem = assert_problem(await client.post(f"/mailings/{parsing}/pause"), 409, None)
    assert problem["mailingStatus"] == "PAUSED"
    # Paused before its parse finished: resuming goes back to PARSING, never to a half list.
    resumed = await client.post(f"/mailings/{parsing}/resume")
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "PARSING"
    assert (await client.post(f"/mailings/{parsing}/resume")).status_code == 409
    assert (await client.post(f"/mailings/{parsing}/pause")).json()["status"] == "PAUSED"
    await parsed(engine, parsing, MIXED, status="PAUSED")  # the parse ends while paused
    running = (await client.post(f"/mailings/{parsing}/resume")).json()
    assert running["status"] == "RUNNING"
    assert running["startedAt"] is not None
    assert (await stored(engine))[2] == 1  # no control enqueues anything


async def test_cancel_stops_what_was_not_sent(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    mailing_id = await new_mailing(client)
    emails = await parsed(engine, mailing_id, MIXED)
    response = await client.post(f"/mailings/{mailing_id}/cancel")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "CANCELLED"
    assert body["finishedAt"] is not None
    assert body["counts"] | {"rows": 0, "valid": 0} == {
        "rows": 0,
        "valid": 0,
        "invalid": 0,
        "duplicates": 0,
        "pending": 1,  # the one already SENDING is left to finish
        "sent": 1,
        "failed": 1,
        "cancelled": 3,  # waiting, queued (its email failed) and the one cancelled before
    }
    assert body["eta"] is None

    async with engine.connect() as conn:
        recipients = {
            r.email: r.status
            for r in await conn.execute(
                text("SELECT email, status FROM mailing_recipients WHERE mailing_id = :m"),
                {"m": mailing_id},
            )
        }
        mails = {
            r.to_address: (r.status, r.last_error, r.failed_at is not None)
            for r in await conn.execute(
                text("SELECT to_address, status, last_error, failed_at FROM emails")
            )
        }
    assert recipients == {
        "sent@example.com": "QUEUED",
        "failed@example.com": "QUEUED",
        "queued@example.com": "CANCELLED",
        "sending@example.com": "QUEUED",
        "waiting@example.com": "CANCELLED",
        "dropped@example.com": "CANCELLED",
    }
    assert mails == {
        "sent@example.com": ("SENT", None, False),
        "failed@example.com": ("FAILED", "550 mailbox unavailable", True),
        "queued@example.com": ("FAILED", "mailing cancelled", True),
        "sending@example.com": ("SENDING", None, False),
    }
    assert len(emails) == 4
    for action in ("cancel", "pause", "resume", "retry-failed"):
        problem = assert_problem(await client.post(f"/mailings/{mailing_id}/{action}"), 409, None)
        assert problem["mailingStatus"] == "CANCELLED"


async def test_retry_failed_requeues_failed_recipients(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    mailing_id = await new_mailing(client)
    await parsed(
        engine,
        mailing_id,
        [
            Recipient("sent@example.com", "QUEUED", "SENT"),
            Recipient("failed@example.com", "QUEUED", "FAILED", "boom"),
        ],
        status="COMPLETED",
    )
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE mailings SET finished_at = now() WHERE id = :id"), {"id": mailing_id}
        )
    response = await client.post(f"/mailings/{mailing_id}/retry-failed")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "RUNNING"
    assert body["finishedAt"] is None
    assert (body["counts"]["pending"], body["counts"]["sent"], body["counts"]["failed"]) == (
        1,
        1,
        0,
    )
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT status, email_id, token_hash, dispatched_at FROM mailing_recipients "
                    "WHERE email = 'failed@example.com'"
                )
            )
        ).one()
    assert tuple(row) == ("PENDING", None, None, None)

    # nothing failed any more: a COMPLETED mailing stays COMPLETED
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE mailings SET status = 'COMPLETED' WHERE id = :id"), {"id": mailing_id}
        )
    again = await client.post(f"/mailings/{mailing_id}/retry-failed")
    assert again.status_code == 200
    assert again.json()["status"] == "COMPLETED"


async def test_other_clients_mailings_are_not_found(
    api_settings: ApiSettings, engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    mailing_id = await new_mailing(client)
    another_tenant = issue_token(api_settings, "someone-else", ("mailing:read", "mailing:send"))
    async with api(api_settings, engine, another_tenant) as other:
        assert (await other.get("/mailings")).json()["data"] == []
        for path in ("", "/entries", "/errors"):
            assert_problem(await other.get(f"/mailings/{mailing_id}{path}"), 404, None)
        for action in ("pause", "resume", "cancel", "retry-failed"):
            assert_problem(await other.post(f"/mailings/{mailing_id}/{action}"), 404, None)
    unknown = uuid.uuid4()
    assert_problem(await client.get(f"/mailings/{unknown}"), 404, None)
    assert_problem(await client.post(f"/mailings/{unknown}/cancel"), 404, None)
    assert (await client.get(f"/mailings/{mailing_id}")).json()["status"] == "PARSING"
