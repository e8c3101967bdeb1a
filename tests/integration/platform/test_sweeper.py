"""The sweeper re-enqueues stuck rows through the outbox; concurrent sweepers never share a row."""

from __future__ import annotations

import asyncio
import uuid

from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.db.session import create_engine, dispose
from relaybox.common.messaging.topology import EMAIL_SEND, MAILING_PARSE
from relaybox.common.settings import DatabaseSettings
from relaybox.consumer.delivery import DeliveryTable
from relaybox.consumer.sweeper import Sweeper, SweptRoute

EMAILS = SweptRoute(DeliveryTable("emails"), EMAIL_SEND)


async def insert_emails(
    engine: AsyncEngine, count: int, status: str, lease: str | None, updated: str = "now()"
) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    async with engine.begin() as conn:
        for email_id in ids:
            await conn.execute(
                text(
                    "INSERT INTO emails (id, tenant_id, to_address, from_address, subject, "
                    "text_body, status, lease_until, updated_at) VALUES (:id, 'c', 'a@b.c', "
                    f"'r@b.c', 's', 't', :status, {lease or 'NULL'}, {updated})"
                ),
                {"id": email_id, "status": status},
            )
    return ids


async def test_stuck_rows_are_requeued_and_live_ones_left_alone(engine: AsyncEngine) -> None:
    expired = await insert_emails(engine, 3, "SENDING", "now() - interval '1 second'")
    await insert_emails(engine, 2, "SENDING", "now() + interval '1 minute'")  # a live lease
    stale = await insert_emails(engine, 2, "PENDING", None, "now() - interval '1 hour'")
    await insert_emails(engine, 2, "PENDING", None)  # fresh: its outbox row is on its way
    await insert_emails(engine, 1, "SENT", None, "now() - interval '1 hour'")
    swept = await Sweeper(engine, [EMAILS], stale_pending_s=600).sweep_table(EMAILS)
    assert sorted(swept) == sorted(expired + stale)
    async with engine.connect() as conn:
        payloads = (await conn.execute(text("SELECT payload->>'id' FROM outbox"))).scalars().all()
        statuses = await conn.execute(
            text("SELECT status FROM emails WHERE id = ANY(CAST(:ids AS uuid[]))"), {"ids": swept}
        )
    assert sorted(payloads) == sorted(swept)
    assert {s for (s,) in statuses} == {"PENDING"}
    # A second sweep finds nothing: the bump of updated_at took them off the stale list.
    assert await Sweeper(engine, [EMAILS], stale_pending_s=600).sweep_table(EMAILS) == []


async def test_two_sweepers_never_take_the_same_row(
    engine: AsyncEngine, db_settings: DatabaseSettings
) -> None:
    stuck = await insert_emails(engine, 120, "SENDING", "now() - interval '1 second'")
    engines = [create_engine(db_settings), create_engine(db_settings)]
    sweepers = [Sweeper(e, [EMAILS], batch_size=7) for e in engines]

    async def run(sweeper: Sweeper) -> list[str]:
        taken: list[str] = []
        while batch := await sweeper.sweep_table(EMAILS):
            taken += batch
        return taken

    try:
        first, second = await asyncio.gather(*(run(s) for s in sweepers))
    finally:
        for e in engines:
            await dispose(e)
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(stuck)
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM outbox")) == 120


async def test_expired_idempotency_answers_are_purged(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for key, hours in (("old", 72), ("recent", 1)):
            await conn.execute(
                text(
                    "INSERT INTO idempotency_keys (client_id, scope, key, request_hash,"
                    " status_code, response, created_at) VALUES ('c', 'email.send', :key,"
                    " repeat('0', 64), 202, '{}', now() - make_interval(hours => :hours))"
                ),
                {"key": key, "hours": hours},
            )
    sweeper = Sweeper(engine, [EMAILS], idempotency_retention_s=48 * 3600)
    await sweeper.sweep()
    async with engine.connect() as conn:
        left = (await conn.execute(text("SELECT key FROM idempotency_keys"))).scalars().all()
    assert left == ["recent"]


async def test_old_webhook_events_are_purged_in_batches(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO webhook_events (provider, event_id, kind, payload, received_at)"
                " SELECT 'mock-meta', 'e' || n, 'message', '{}',"
                " now() - make_interval(hours => CASE WHEN n <= 3 THEN 200 ELSE 100 END)"
                " FROM generate_series(1, 5) AS n"
            )
        )
    sweeper = Sweeper(engine, [EMAILS], webhook_event_retention_s=168 * 3600, purge_batch_size=2)
    events = next(r for r in sweeper.retentions() if r.table == "webhook_events")
    before = REGISTRY.get_sample_value("relaybox_sweeper_purged_total", {"table": "webhook_events"})
    assert [await sweeper.purge(events) for _ in range(3)] == [2, 1, 0]
    after = REGISTRY.get_sample_value("relaybox_sweeper_purged_total", {"table": "webhook_events"})
    assert (after or 0) - (before or 0) == 3
    async with engine.connect() as conn:
        left = await conn.scalars(text("SELECT event_id FROM webhook_events ORDER BY event_id"))
        assert left.all() == ["e4", "e5"]


async def test_a_mailing_whose_parse_stalled_gets_a_new_parse_message(engine: AsyncEngine) -> None:
    stalled, parsing, running = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with engine.begin() as conn:
        for mailing_id, status, minutes in (  # rows_total: 0 until parsed
            (stalled, "PARSING", 30),  # its message was lost: nothing touched it for 30 min
            (parsing, "PARSING", 0),  # a parse making progress bumps updated_at
            (running, "RUNNING", 30),  # parsed long ago
        ):
            await conn.execute(
                text(
                    "INSERT INTO mailings (id, tenant_id, status, subject, body_template,"
                    " file_sha256, file_bytes, rows_total, updated_at) VALUES (:id, 'c', :status,"
                    " 's', 'b', repeat('0', 64), 1, :rows, now() - make_interval(mins => :m))"
                ),
                {
                    "id": mailing_id,
                    "status": status,
                    "rows": int(status == "RUNNING"),
                    "m": minutes,
                },
            )
    sweeper = Sweeper(engine, [EMAILS], stale_parse_s=600)
    assert await sweeper.requeue_stale_parses() == [str(stalled)]
    assert await sweeper.requeue_stale_parses() == []  # taken once: updated_at was bumped
    async with engine.connect() as conn:
        queued = (await conn.execute(text("SELECT routing_key, payload->>'id' FROM outbox"))).all()
    assert [tuple(row) for row in queued] == [(MAILING_PARSE, str(stalled))]
