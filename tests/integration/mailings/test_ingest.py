"""`mailing.parse`: an uploaded CSV, stored in chunks, becomes recipients and errors."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.messaging.topology import MAILING_PARSE
from relaybox.common.outbox import enqueue
from relaybox.common.settings import DatabaseSettings
from relaybox.consumer.errors import PoisonMessageError
from relaybox.consumer.mailings.handler import MailingParseHandler
from relaybox.consumer.mailings.ingest import MailingParseSettings, ingest
from relaybox.consumer.settings import ConsumerSettings
from tests.support.pipeline import Pipeline, eventually

FIXTURE = Path(__file__).resolve().parents[4] / "shared/fixtures/mailing_list.csv"
# The fixture's invalid rows, numbered as a spreadsheet shows them (the header is row 1).
FIXTURE_ERRORS = [(3, "invalid-email"), (6, "not-an-email"), (9, "@domain.com")]


async def create_mailing(engine: AsyncEngine, data: bytes, chunk_size: int = 64) -> uuid.UUID:
    """A PARSING mailing whose file is stored in chunks of `chunk_size` bytes."""
    mailing_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO mailings (id, tenant_id, subject, body_template, file_name,"
                " file_sha256, file_bytes) VALUES (:id, 'test-client', 'Hello', 'Hi {token}',"
                " 'list.csv', :sha, :size)"
            ),
            {"id": mailing_id, "sha": hashlib.sha256(data).hexdigest(), "size": len(data)},
        )
        chunks = [
            {"id": mailing_id, "seq": seq, "data": data[start : start + chunk_size]}
            for seq, start in enumerate(range(0, len(data), chunk_size))
        ]
        if chunks:
            await conn.execute(
                text(
                    "INSERT INTO mailing_chunks (mailing_id, seq, data) VALUES (:id, :seq, :data)"
                ),
                chunks,
            )
    return mailing_id


async def mailing(engine: AsyncEngine, mailing_id: uuid.UUID) -> Any:
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT * FROM mailings WHERE id = :id"), {"id": mailing_id}
        )
        return result.mappings().one()


async def recipients(engine: AsyncEngine, mailing_id: uuid.UUID) -> list[tuple[int, str, str]]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT row_number, email, email_key FROM mailing_recipients"
                " WHERE mailing_id = :id ORDER BY row_number"
            ),
            {"id": mailing_id},
        )
        return [(r[0], r[1], r[2]) for r in result]


async def errors(engine: AsyncEngine, mailing_id: uuid.UUID) -> list[tuple[int, str, str]]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT row_number, raw_value, reason FROM mailing_errors"
                " WHERE mailing_id = :id ORDER BY row_number"
            ),
            {"id": mailing_id},
        )
        return [(r[0], r[1], r[2]) for r in result]


async def set_status(engine: AsyncEngine, mailing_id: uuid.UUID, status: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE mailings SET status = :s WHERE id = :id"), {"s": status, "id": mailing_id}
        )


def counts(row: Any) -> tuple[int, int, int, int]:
    return row["rows_total"], row["valid_count"], row["invalid_count"], row["duplicate_count"]


@pytest.fixture
def handler(engine: AsyncEngine, db_settings: DatabaseSettings) -> MailingParseHandler:
    return MailingParseHandler(engine, ConsumerSettings(database=db_settings))


async def test_fixture_file_becomes_102_recipients_and_3_errors(
    engine: AsyncEngine, handler: MailingParseHandler
) -> None:
    data = FIXTURE.read_bytes()
    mailing_id = await create_mailing(engine, data)

    assert await handler.handle({"id": str(mailing_id)}, {}) == "parsed"

    found = await recipients(engine, mailing_id)
    assert len(found) == 102
    assert found[0] == (2, "user1@example.com", "user1@example.com")
    assert [(number, raw) for number, raw, _ in await errors(engine, mailing_id)] == FIXTURE_ERRORS
    reasons = [reason for _, _, reason in await errors(engine, mailing_id)]
    assert reasons[0] == "An email address must have an @-sign."
    assert reasons[2] == "There must be something before the @-sign."
    row = await mailing(engine, mailing_id)
    assert row["status"] == "RUNNING"
    assert counts(row) == (105, 102, 3, 0)
    assert row["parsed_chunks"] == -(-len(data) // 64)
    assert row["started_at"] is not None
    assert row["error"] is None


async def test_a_second_delivery_changes_nothing(
    engine: AsyncEngine, handler: MailingParseHandler
) -> None:
    mailing_id = await create_mailing(engine, FIXTURE.read_bytes())
    assert await handler.handle({"id": str(mailing_id)}, {}) == "parsed"
    before = (await mailing(engine, mailing_id), await recipients(engine, mailing_id))

    assert await handler.handle({"id": str(mailing_id)}, {}) == "duplicate"

    assert (await mailing(engine, mailing_id), await recipients(engine, mailing_id)) == before


async def test_parsing_again_after_a_crash_gives_identical_rows(engine: AsyncEngine) -> None:
    """A crash before the final commit leaves some rows; the re-run converges on the same."""
    limits = MailingParseSettings(batch_size=7)
    mailing_id = await create_mailing(engine, FIXTURE.read_bytes(), chunk_size=100)
    assert (await ingest(engine, mailing_id, limits)).outcome == "parsed"
    expected = (await recipients(engine, mailing_id), await errors(engine, mailing_id))
    parsed = await mailing(engine, mailing_id)

    # As if the process died mid-parse: still PARSING, only part of the rows written.
    async with engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM mailing_recipients WHERE mailing_id = :id AND row_number > 40"),
            {"id": mailing_id},
        )
        await conn.execute(
            text("DELETE FROM mailing_errors WHERE mailing_id = :id AND row_number > 5"),
            {"id": mailing_id},
        )
        await conn.execute(
            text(
                "UPDATE mailings SET status = 'PARSING', rows_total = 0, valid_count = 0,"
                " invalid_count = 0, duplicate_count = 0 WHERE id = :id"
            ),
            {"id": mailing_id},
        )

    result = await ingest(engine, mailing_id, limits)

    assert (result.outcome, result.valid, result.invalid) == ("parsed", 102, 3)
    assert (await recipients(engine, mailing_id), await errors(engine, mailing_id)) == expected
    assert counts(await mailing(engine, mailing_id)) == counts(parsed)


async def test_duplicates_are_case_insensitive_and_counted(
    engine: AsyncEngine, handler: MailingParseHandler
) -> None:
    data = (
        b"Name,EMAIL\r\nAnn,Ann@Example.com\r\nAnn again,ann@EXAMPLE.COM\r\n\r\n"
        b"Bob,bob@example.com\r\nAnn thrice, ANN@example.com \r\nNo one,nope\r\n"
        b"Bob again,Bob@example.com\r\n"
    )
    mailing_id = await create_mailing(engine, data, chunk_size=16)

    assert await handler.handle({"id": str(mailing_id)}, {}) == "parsed"

    assert await recipients(engine, mailing_id) == [
        (2, "Ann@example.com", "ann@example.com"),
        (5, "bob@example.com", "bob@example.com"),
    ]
    assert [(n, raw) for n, raw, _ in await errors(engine, mailing_id)] == [(7, "nope")]
    assert counts(await mailing(engine, mailing_id)) == (6, 2, 1, 3)


async def test_duplicates_across_batches_keep_the_first_row(engine: AsyncEngine) -> None:
    lines = ["email"] + [f"user{i % 10}@example.com" for i in range(50)]
    mailing_id = await create_mailing(engine, "\n".join(lines).encode())

    result = await ingest(engine, mailing_id, MailingParseSettings(batch_size=4))

    assert (result.rows_total, result.valid, result.invalid, result.duplicates) == (50, 10, 0, 40)
    assert [n for n, _, _ in await recipients(engine, mailing_id)] == list(range(2, 12))


async def test_an_address_keeps_its_first_row_whatever_was_written_first(
    engine: AsyncEngine,
) -> None:
    """Batches on two connections commit in any order; the lowest row number wins."""
    lines = ["email", "a@example.com", "b@example.com", "A@Example.com", "B@example.com"]
    mailing_id = await create_mailing(engine, "\n".join(lines).encode())
    async with engine.begin() as conn:  # as if the later batch had committed first
        await conn.execute(
            text(
                "INSERT INTO mailing_recipients (mailing_id, row_number, email, email_key)"
                " VALUES (:id, 4, 'A@example.com', 'a@example.com')"
            ),
            {"id": mailing_id},
        )

    result = await ingest(engine, mailing_id, MailingParseSettings(batch_size=2))

    assert (result.valid, result.duplicates) == (2, 2)
    assert await recipients(engine, mailing_id) == [
        (2, "a@example.com", "a@example.com"),
        (3, "b@example.com", "b@example.com"),
    ]


@pytest.mark.parametrize("writers", [1, 3])
async def test_any_number_of_writers_gives_the_same_rows(engine: AsyncEngine, writers: int) -> None:
    mailing_id = await create_mailing(engine, FIXTURE.read_bytes())
    limits = MailingParseSettings(batch_size=3, writers=writers)
    result = await ingest(engine, mailing_id, limits)
    assert (result.rows_total, result.valid, result.invalid) == (105, 102, 3)
    assert [n for n, _, _ in await recipients(engine, mailing_id)][:3] == [2, 4, 5]


async def test_a_cancelled_parse_unwinds_and_a_new_one_completes(engine: AsyncEngine) -> None:
    """Cancelled mid-file (worker shutdown): writes in flight end, connections go back."""
    data = "\n".join(["email", *(f"user{i}@example.com" for i in range(20_000))]).encode()
    mailing_id = await create_mailing(engine, data, chunk_size=4096)
    limits = MailingParseSettings(batch_size=50)
    task = asyncio.create_task(ingest(engine, mailing_id, limits))
    await eventually(lambda: _has_recipients(engine, mailing_id), interval=0.01)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert (await mailing(engine, mailing_id))["status"] == "PARSING"
    result = await ingest(engine, mailing_id, MailingParseSettings())
    assert (result.outcome, result.valid) == ("parsed", 20_000)


async def _has_recipients(engine: AsyncEngine, mailing_id: uuid.UUID) -> bool:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT count(*) FROM mailing_recipients WHERE mailing_id = :id"),
            {"id": mailing_id},
        )
    return bool(found)


async def test_latin1_file_restarts_when_utf8_was_already_read(engine: AsyncEngine) -> None:
    # Valid UTF-8 (with an é) in the first chunks, then a Latin-1 é: read again as Latin-1.
    head = "email\nrené@exemple.fr\n".encode()
    middle = "".join(f"user{i}@example.com\n" for i in range(20)).encode()
    tail = "josé@exemple.fr\n".encode("latin-1")
    mailing_id = await create_mailing(engine, head + middle + tail, chunk_size=32)

    result = await ingest(engine, mailing_id, MailingParseSettings(batch_size=5))

    assert (result.outcome, result.rows_total, result.valid) == ("parsed", 22, 22)
    found = await recipients(engine, mailing_id)
    assert len(found) == 22
    assert found[0] == (2, "renÃ©@exemple.fr", "renã©@exemple.fr")
    assert found[-1] == (23, "josé@exemple.fr", "josé@exemple.fr")


async def test_headerless_single_column_file(engine: AsyncEngine) -> None:
    mailing_id = await create_mailing(engine, b"a@example.com\r\nnope\r\nb@example.com")
    result = await ingest(engine, mailing_id, MailingParseSettings())
    assert (result.rows_total, result.valid, result.invalid) == (3, 2, 1)
    assert [(n, raw) for n, raw, _ in await errors(engine, mailing_id)] == [(2, "nope")]


async def test_multi_column_file_without_email_column_fails(
    engine: AsyncEngine, handler: MailingParseHandler
) -> None:
    mailing_id = await create_mailing(engine, b"name,address\nJane,jane@example.com\n")

    assert await handler.handle({"id": str(mailing_id)}, {}) == "failed"

    row = await mailing(engine, mailing_id)
    assert row["status"] == "FAILED"
    assert "none is named 'email'" in row["error"]
    assert row["finished_at"] is not None
    assert await recipients(engine, mailing_id) == []


async def test_a_parse_that_crashes_ends_failed_instead_of_in_the_dlq(
    engine: AsyncEngine, handler: MailingParseHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailing_id = await create_mailing(engine, b"email\nann@example.com\n")

    async def broken(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("relaybox.consumer.mailings.handler.ingest", broken)
    assert await handler.handle({"id": str(mailing_id)}, {}) == "failed"

    row = await mailing(engine, mailing_id)
    assert row["status"] == "FAILED"
    assert row["error"] == "the file could not be parsed: internal error (RuntimeError)"
    assert row["finished_at"] is not None


async def test_empty_file_fails(engine: AsyncEngine) -> None:
    mailing_id = await create_mailing(engine, b"email\r\n\r\n")
    assert (await ingest(engine, mailing_id, MailingParseSettings())).outcome == "failed"
    assert (await mailing(engine, mailing_id))["error"] == "the file has no data rows"


async def test_more_rows_than_the_limit_fails_and_leaves_no_rows(engine: AsyncEngine) -> None:
    mailing_id = await create_mailing(engine, FIXTURE.read_bytes())

    result = await ingest(engine, mailing_id, MailingParseSettings(max_rows=50, batch_size=10))

    assert result.outcome == "failed"
    row = await mailing(engine, mailing_id)
    assert (row["status"], row["error"]) == ("FAILED", "the file has more than 50 data rows")
    assert await recipients(engine, mailing_id) == []
    assert await errors(engine, mailing_id) == []


async def test_a_cancelled_mailing_is_left_alone(
    engine: AsyncEngine, handler: MailingParseHandler
) -> None:
    mailing_id = await create_mailing(engine, FIXTURE.read_bytes())
    await set_status(engine, mailing_id, "CANCELLED")

    assert await handler.handle({"id": str(mailing_id)}, {}) == "duplicate"
    # Cancelled between the handler's check and the parse: nothing is written.
    assert (await ingest(engine, mailing_id, MailingParseSettings())).outcome == "cancelled"

    row = await mailing(engine, mailing_id)
    assert (row["status"], row["started_at"], counts(row)) == ("CANCELLED", None, (0, 0, 0, 0))
    assert await recipients(engine, mailing_id) == []


async def test_a_mailing_paused_while_parsing_is_parsed_and_stays_paused(
    engine: AsyncEngine, handler: MailingParseHandler
) -> None:
    mailing_id = await create_mailing(engine, FIXTURE.read_bytes())
    await set_status(engine, mailing_id, "PAUSED")  # paused before (or during) the parse

    assert await handler.handle({"id": str(mailing_id)}, {}) == "parsed"

    row = await mailing(engine, mailing_id)
    assert (row["status"], row["started_at"], counts(row)) == ("PAUSED", None, (105, 102, 3, 0))
    assert len(await recipients(engine, mailing_id)) == 102
    assert await handler.handle({"id": str(mailing_id)}, {}) == "duplicate"


async def test_nul_bytes_are_stored_visibly(engine: AsyncEngine) -> None:
    mailing_id = await create_mailing(engine, b"email\na\x00b@example.com\n")
    assert (await ingest(engine, mailing_id, MailingParseSettings())).invalid == 1
    assert (await errors(engine, mailing_id))[0][1] == "a\ufffdb@example.com"


@pytest.mark.parametrize("payload", [{}, {"id": "not-a-uuid"}, {"id": None}])
async def test_malformed_message_is_poison(
    handler: MailingParseHandler, payload: dict[str, Any]
) -> None:
    with pytest.raises(PoisonMessageError):
        await handler.handle(payload, {})


async def test_unknown_mailing_is_poison(handler: MailingParseHandler) -> None:
    with pytest.raises(PoisonMessageError, match="no mailing"):
        await handler.handle({"id": str(uuid.uuid4())}, {})


async def test_parse_message_through_the_pipeline(engine: AsyncEngine, pipeline: Pipeline) -> None:
    mailing_id = await create_mailing(engine, FIXTURE.read_bytes(), chunk_size=1024)
    async with engine.begin() as conn:
        await enqueue(conn, routing_key=MAILING_PARSE, payload={"id": str(mailing_id)})

    async def running() -> bool:
        return bool((await mailing(engine, mailing_id))["status"] == "RUNNING")

    await eventually(running)
    assert counts(await mailing(engine, mailing_id)) == (105, 102, 3, 0)
