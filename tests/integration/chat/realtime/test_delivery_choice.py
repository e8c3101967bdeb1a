"""Push or socket, end to end (publisher, consumer, push gateway, two replicas): a device with
a live socket gets the message on it and its ack records DELIVERED with no push; a socket that
never acks is pushed after the socket check."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.auth import USER_SCOPES, issue_token
from relaybox.api.settings import ApiSettings
from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings, ChatSettings, DatabaseSettings
from relaybox.consumer.providers.push import PushSettings
from relaybox.mock_meta.smtp.sink import SmtpSink
from tests.integration.chat.conftest import SEND_PATH, TENANT, Gateway, People
from tests.integration.chat.realtime.conftest import Replicas, opened
from tests.integration.chat.support import conversation, post
from tests.integration.chat.test_presence import device
from tests.support.pipeline import (
    Pipeline,
    consumer_settings,
    eventually,
    publisher_settings,
    running_pipeline,
)

CHECK_S = 1.0


@pytest.fixture
async def pipeline(
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    gateway: tuple[Gateway, str],
) -> AsyncIterator[Pipeline]:
    con = consumer_settings(
        db_settings,
        broker_settings,
        sink.port,
        push=PushSettings(url=f"{gateway[1]}{SEND_PATH}"),
        chat=ChatSettings(socket_ack_timeout_s=CHECK_S),
    )
    async with running_pipeline(
        engine, topology, publisher_settings(db_settings, broker_settings), con
    ) as running:
        yield running


@pytest.fixture
def token(chat_settings: ApiSettings) -> Any:
    def make(user: str) -> str:
        return issue_token(chat_settings, user, USER_SCOPES, tenant=TENANT)

    return make


async def status_of(engine: AsyncEngine, message_id: str, user: str) -> str:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT status FROM chat_recipients WHERE message_id = :m AND user_id = :u"),
            {"m": message_id, "u": user},
        )
        return str(found.scalar_one())


async def outbox_empty(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return not (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one()


async def test_a_live_device_gets_the_message_on_its_socket_and_its_ack_delivers_it_unpushed(
    replicas: Replicas,
    people: People,
    token: Any,
    engine: AsyncEngine,
    pipeline: Pipeline,
    gateway: tuple[Gateway, str],
) -> None:
    one, two = await replicas(), await replicas()
    chat = await conversation(people("alice"), "direct", ("bob",))
    phone = await device(people, "bob", "bob-phone")
    async with (
        opened(one.port, token=token("alice")) as alice,
        opened(two.port, token=token("bob"), device=phone) as bob,
    ):
        for socket in (alice, bob):
            await socket.until(lambda f: f["type"] == "live")
        message = await post(people("alice"), chat, "on the socket")
        frame = await bob.until(lambda f: f["type"] == "message.created")
        assert frame["data"]["id"] == message["id"]
        await bob.send({"type": "ack", "messageIds": [message["id"]]})
        delivered = await alice.until(
            lambda f: f["type"] == "message.status" and f["data"]["status"] == "DELIVERED"
        )
        assert delivered["data"]["copies"] == [{"messageId": message["id"], "userId": "bob"}]
        assert await status_of(engine, message["id"], "bob") == "DELIVERED"

        async def checked() -> bool:  # the socket check came due and found it acked
            return await outbox_empty(engine)

        await eventually(checked, timeout=CHECK_S + 10)
        await bob.quiet(0.5)
    assert gateway[0].pushed == []
    assert await status_of(engine, message["id"], "bob") == "DELIVERED"


async def test_a_live_socket_that_never_acks_is_pushed_after_the_socket_check(
    replicas: Replicas,
    people: People,
    token: Any,
    engine: AsyncEngine,
    pipeline: Pipeline,
    gateway: tuple[Gateway, str],
) -> None:
    replica = await replicas()
    chat = await conversation(people("alice"), "direct", ("carol",))
    phone = await device(people, "carol", "carol-phone")
    async with opened(replica.port, token=token("carol"), device=phone) as carol:
        await carol.until(lambda f: f["type"] == "live")
        message = await post(people("alice"), chat, "never acked")
        await carol.until(lambda f: f["type"] == "message.created")
        # the app died before acking: no ack; the socket goes away

    async def pushed() -> bool:
        return gateway[0].pushed == ["carol-phone"]

    await eventually(pushed, timeout=CHECK_S + 10)
    assert await status_of(engine, message["id"], "carol") == "SENT"
