"""The batched claim and SENT of the consumer's group commit (`DeliveryTable.claim_many`,
`mark_sent_many`) answer per row as the single-row transitions would, one after the other."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.db.session import run_on_driver
from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.consumer.delivery import DeliveryTable
from relaybox.consumer.handlers.email import EmailHandler
from relaybox.consumer.providers.base import OutgoingEmail
from tests.support.pipeline import consumer_settings

EMAILS = DeliveryTable("emails")


async def add_email(
    engine: AsyncEngine, status: str = "PENDING", lease_s: float | None = None
) -> uuid.UUID:
    email_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO emails (id, tenant_id, to_address, from_address, subject, text_body,"
                " status, lease_until) VALUES (:id, 't', 'to@example.com', 'from@example.com',"
                " 's', 'b', :status, now() + make_interval(secs => :lease))"
            ),
            {"id": email_id, "status": status, "lease": lease_s if lease_s is not None else 0},
        )
    return email_id


async def on_driver(engine: AsyncEngine, work: Any) -> Any:
    async def run(conn: asyncpg.Connection, _repeated: bool) -> Any:
        return await work(conn)

    return await run_on_driver(engine, run)


async def states(engine: AsyncEngine, ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id, status, attempts FROM emails WHERE id = ANY(:ids)"), {"ids": ids}
        )
        return {r.id: (r.status, r.attempts) for r in rows}


async def test_claim_many_claims_what_a_single_claim_would(engine: AsyncEngine) -> None:
    pending = [await add_email(engine) for _ in range(3)]
    sent = await add_email(engine, "SENT")
    leased = await add_email(engine, "SENDING", lease_s=60)
    expired = await add_email(engine, "SENDING", lease_s=-1)
    missing = uuid.uuid4()
    claims = [(pending[0], 30.0), (sent, 30.0), (str(pending[1]), 30.0), (leased, 30.0)]
    claims += [(missing, 30.0), (expired, 45.0), (pending[2], 30.0)]

    rows = await on_driver(engine, lambda c: EMAILS.claim_many(c, claims))

    claimed = [r["id"] if r is not None else None for r in rows]
    assert claimed == [pending[0], None, pending[1], None, None, expired, pending[2]]
    assert all(r["status"] == "SENDING" for r in rows if r is not None)
    after = await states(engine, [*pending, sent, leased, expired])
    assert after[sent] == ("SENT", 0)
    assert after[leased] == ("SENDING", 0)
    assert after[expired] == ("SENDING", 1)
    assert all(after[p] == ("SENDING", 1) for p in pending)


async def test_claim_many_gives_a_row_claimed_twice_to_the_first_claim(
    engine: AsyncEngine,
) -> None:
    email_id = await add_email(engine)
    rows = await on_driver(
        engine, lambda c: EMAILS.claim_many(c, [(email_id, 30.0), (str(email_id), 30.0)])
    )
    assert rows[0] is not None
    assert rows[1] is None
    assert (await states(engine, [email_id]))[email_id] == ("SENDING", 1)  # one attempt


async def test_claim_many_sets_each_claims_lease(engine: AsyncEngine) -> None:
    short, long = await add_email(engine), await add_email(engine)
    await on_driver(engine, lambda c: EMAILS.claim_many(c, [(short, 10.0), (long, 600.0)]))
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id, extract(epoch FROM lease_until - now()) AS left_s FROM emails"
                " WHERE id = ANY(:ids)"
            ),
            {"ids": [short, long]},
        )
        left = {r.id: r.left_s for r in rows}
    assert 5 < left[short] <= 10
    assert 590 < left[long] <= 600


async def test_mark_sent_many_moves_only_rows_still_in_flight(engine: AsyncEngine) -> None:
    sending = await add_email(engine, "SENDING", lease_s=60)
    pending = await add_email(engine)
    failed = await add_email(engine, "FAILED")
    moved = await on_driver(
        engine,
        lambda c: EMAILS.mark_sent_many(
            c, [(sending, "<a@x>"), (failed, None), (pending, None), (str(sending), "<b@x>")]
        ),
    )
    assert moved == [True, False, True, False]  # the second SENT of one row moves nothing
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id, status, provider_message_id, lease_until, sent_at FROM emails"
                " WHERE id = ANY(:ids)"
            ),
            {"ids": [sending, pending, failed]},
        )
        found = {r.id: r for r in rows}
    assert found[sending].status == "SENT"
    assert found[sending].provider_message_id == "<a@x>"
    assert found[sending].lease_until is None
    assert found[sending].sent_at is not None
    assert found[pending].status == "SENT"
    assert found[pending].provider_message_id is None
    assert found[failed].status == "FAILED"


class CountingTable(DeliveryTable):
    """The emails' transitions, counting the claims that went in a batched statement."""

    batched_claims = 0

    async def claim_many(
        self, conn: asyncpg.Connection, claims: Sequence[tuple[Any, float]]
    ) -> list[dict[str, Any] | None]:
        object.__setattr__(self, "batched_claims", self.batched_claims + len(claims))
        return await super().claim_many(conn, claims)


class RecordingProvider:
    """An email provider that accepts everything, counting the calls per email id."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    async def prepare(self) -> None:
        """Nothing to prepare."""

    async def send(self, email: OutgoingEmail) -> str:
        self.calls[email.id] = self.calls.get(email.id, 0) + 1
        await asyncio.sleep(0.001)
        return f"<{email.id}@recording>"

    async def close(self) -> None:
        """Nothing to close."""


async def test_concurrent_deliveries_share_statements_and_send_each_email_once(
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
) -> None:
    """Forty deliveries at once (each email twice: a redelivery beside the original) go through
    the handler's group commit: every email is sent exactly once and recorded SENT."""
    provider = RecordingProvider()
    settings = consumer_settings(db_settings, broker_settings, smtp_port=1)
    handler = EmailHandler(engine, topology, settings, provider)
    table = handler.table = CountingTable("emails")
    ids = [await add_email(engine) for _ in range(20)]
    deliveries = [handler.handle({"id": str(i)}, {}) for i in ids for _ in range(2)]
    outcomes = await asyncio.gather(*deliveries)
    assert table.batched_claims > 0  # claims did share statements
    assert sorted(outcomes).count("sent") == 20
    assert set(outcomes) <= {"sent", "deferred", "duplicate"}
    assert provider.calls == {str(i): 1 for i in ids}
    after = await states(engine, ids)
    assert all(after[i] == ("SENT", 1) for i in ids)
