"""The mailing dispatcher: bounded in flight, fair across mailings, tokens only in the message."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid

from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.db.session import create_engine, dispose
from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.consumer.handlers.email import EmailHandler
from relaybox.consumer.mailings.dispatcher import Dispatcher
from relaybox.consumer.providers.smtp import SmtpProvider
from relaybox.mock_meta.smtp.sink import SmtpSink
from tests.support.pipeline import (
    consumer_settings,
    eventually,
    publisher_settings,
    running_pipeline,
)

BODY = "Thank you for signing up. Please verify your token {token} to continue."


async def make_mailing(engine: AsyncEngine, recipients: int, status: str = "RUNNING") -> str:
    mailing_id = str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO mailings (id, tenant_id, status, subject, body_template, file_sha256,"
                " file_bytes) VALUES (:id, 'c', :status, 'Complete your registration', :body,"
                " 'x', 1)"
            ),
            {"id": mailing_id, "status": status, "body": BODY},
        )
        await conn.execute(
            text(
                "INSERT INTO mailing_recipients (mailing_id, row_number, email, email_key) "
                "SELECT :id, n, 'u' || n || '@' || :tag || '.example', "
                "'u' || n || '@' || :tag || '.example' FROM generate_series(1, :count) AS n"
            ),
            {"id": mailing_id, "count": recipients, "tag": mailing_id[:8]},
        )
    return mailing_id


async def queued(engine: AsyncEngine) -> list[tuple[str, str]]:
    """(mailing_id, email) of queued recipients, in dispatch order."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT mailing_id::text, email FROM mailing_recipients WHERE status = 'QUEUED'"
                " ORDER BY dispatched_at, id"
            )
        )
        return [(r[0], r[1]) for r in rows]


async def finish_all_queued(engine: AsyncEngine) -> None:
    """Play the consumer: every queued email is SENT."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE emails SET status = 'SENT', sent_at = now() WHERE id IN "
                "(SELECT email_id FROM mailing_recipients WHERE status = 'QUEUED')"
            )
        )


async def test_in_flight_is_bounded(engine: AsyncEngine) -> None:
    await make_mailing(engine, 20)
    dispatcher = Dispatcher(engine, max_in_flight=3)
    assert await dispatcher.dispatch() == 3
    assert await dispatcher.dispatch() == 0  # nothing finished yet: the budget is used up
    await finish_all_queued(engine)
    assert await dispatcher.dispatch() == 3


async def test_a_small_mailing_is_not_starved_by_a_big_one(engine: AsyncEngine) -> None:
    big = await make_mailing(engine, 200)
    small = await make_mailing(engine, 5)
    dispatcher = Dispatcher(engine, max_in_flight=1)
    order: list[str] = []
    for _ in range(12):
        assert await dispatcher.dispatch() == 1
        order.append((await queued(engine))[-1][0])
        await finish_all_queued(engine)
    # One slot at a time, alternating: the small mailing is done within its share (10 slots).
    assert order[:10].count(small) == 5
    assert order[10:] == [big, big]
    assert small in await dispatcher.complete()


async def test_tokens_live_only_in_the_message(engine: AsyncEngine) -> None:
    await make_mailing(engine, 3)
    await Dispatcher(engine, max_in_flight=10).dispatch()
    async with engine.connect() as conn:
        messages = (await conn.execute(text("SELECT payload FROM outbox"))).scalars().all()
        hashes = set(
            (await conn.execute(text("SELECT token_hash FROM mailing_recipients"))).scalars()
        )
        bodies = set((await conn.execute(text("SELECT text_body FROM emails"))).scalars())
    tokens = [m["token"] for m in messages]
    assert len(set(tokens)) == 3
    assert all(len(t) >= 22 for t in tokens)  # ≥ 128 bits, base64url
    assert {hashlib.sha256(t.encode()).hexdigest() for t in tokens} == hashes
    assert bodies == {BODY}  # the email log keeps the placeholder, never a token


async def test_paused_mailings_are_not_dispatched_and_finished_ones_complete(
    engine: AsyncEngine,
) -> None:
    await make_mailing(engine, 5, status="PAUSED")
    running = await make_mailing(engine, 2)
    dispatcher = Dispatcher(engine, max_in_flight=10)
    assert await dispatcher.dispatch() == 2
    assert await dispatcher.complete() == []
    await finish_all_queued(engine)
    assert await dispatcher.complete() == [running]


async def test_a_round_with_no_running_mailing_is_one_read(engine: AsyncEngine) -> None:
    """The consumer's round: dispatch and complete while a mailing runs; with none running
    (paused, finished or none at all) one read, no transaction."""
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    paused = await make_mailing(engine, 3, status="PAUSED")
    dispatcher = Dispatcher(engine, max_in_flight=10)
    sa_event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        assert await dispatcher.round() == 0
        assert statements == []  # the read runs on the driver's connection: no SQLAlchemy
        running = await make_mailing(engine, 2)
        assert await dispatcher.round() == 2
        assert statements != []  # the dispatch and the completion check ran
        await finish_all_queued(engine)
        assert await dispatcher.round() == 0
        assert await status_of(engine, running) == "COMPLETED"
        statements.clear()
        assert await dispatcher.round() == 0
        assert statements == []
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", seen)
    assert await status_of(engine, paused) == "PAUSED"
    assert len(await queued(engine)) == 2


async def status_of(engine: AsyncEngine, mailing_id: str) -> str:
    async with engine.connect() as conn:
        return str(
            await conn.scalar(
                text("SELECT status FROM mailings WHERE id = :id"), {"id": mailing_id}
            )
        )


async def test_two_dispatchers_never_queue_a_recipient_twice(
    engine: AsyncEngine, db_settings: DatabaseSettings
) -> None:
    await make_mailing(engine, 40)
    engines = [create_engine(db_settings) for _ in range(2)]
    dispatchers = [Dispatcher(e, max_in_flight=5) for e in engines]
    try:
        for _ in range(10):
            await asyncio.gather(*(d.dispatch() for d in dispatchers))
            assert len(await queued(engine)) <= 5 * (1 + _)
            await finish_all_queued(engine)
    finally:
        for e in engines:
            await dispose(e)
    emails = [e for _, e in await queued(engine)]
    assert len(emails) == len(set(emails)) == 40


async def test_each_recipient_receives_its_own_token(
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
) -> None:
    mailing_id = await make_mailing(engine, 4)
    dispatcher = Dispatcher(engine, max_in_flight=10)
    con = consumer_settings(db_settings, broker_settings, sink.port)
    async with running_pipeline(
        engine, topology, publisher_settings(db_settings, broker_settings), con
    ):
        await dispatcher.dispatch()

        async def all_received() -> bool:
            return len(sink.store.find()) == 4

        await eventually(all_received)
    assert await dispatcher.complete() == [mailing_id]
    async with engine.connect() as conn:
        stored = set(
            (await conn.execute(text("SELECT token_hash FROM mailing_recipients"))).scalars()
        )
        log_bodies = set((await conn.execute(text("SELECT text_body FROM emails"))).scalars())
    received = [re.search(r"token (\S+) to continue", m.text or "") for m in sink.store.find()]
    tokens = [m.group(1) for m in received if m]
    assert {hashlib.sha256(t.encode()).hexdigest() for t in tokens} == stored
    assert log_bodies == {BODY}


async def test_a_stale_token_is_replaced_so_the_mailed_one_always_verifies(
    engine: AsyncEngine, topology: Topology, db_settings: DatabaseSettings, sink: SmtpSink
) -> None:
    """The sweeper's tokenless copy of a message issues a new token; the original message,
    arriving later with the old one, must not mail a token that no longer verifies."""
    await make_mailing(engine, 1)
    await Dispatcher(engine, max_in_flight=10).dispatch()
    async with engine.connect() as conn:
        email_id, original = (
            await conn.execute(text("SELECT payload->>'id', payload->>'token' FROM outbox LIMIT 1"))
        ).one()
    settings = consumer_settings(db_settings, BrokerSettings(), sink.port)
    handler = EmailHandler(engine, topology, settings, SmtpProvider(settings.smtp))

    async def stored() -> str:
        async with engine.connect() as conn:
            found: str = (
                await conn.execute(text("SELECT token_hash FROM mailing_recipients"))
            ).scalar_one()
            return found

    def digest(token: str | None) -> str:
        return hashlib.sha256((token or "").encode()).hexdigest()

    assert await handler._current_token(email_id, original) == original  # the usual case
    assert await stored() == digest(original)
    reissued = await handler._current_token(email_id, None)  # the sweeper's copy
    assert reissued not in (None, original)
    assert await stored() == digest(reissued)
    late = await handler._current_token(email_id, original)  # the original, late
    assert late not in (None, original)
    assert await stored() == digest(late)
    assert await handler._current_token(str(uuid.uuid4()), "x") is None  # not a mailing's
