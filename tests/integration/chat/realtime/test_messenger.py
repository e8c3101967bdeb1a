"""The messenger, live: posts, acks, reads and membership changes reach the sockets of the
users they concern — on whichever replica — and only theirs."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.auth import USER_SCOPES, issue_token
from relaybox.api.settings import ApiSettings
from tests.integration.chat.conftest import TENANT, People
from tests.integration.chat.realtime.conftest import Replicas, Socket, opened
from tests.integration.chat.support import add, call, conversation, kick, page, post, read
from tests.support.pipeline import eventually

pytestmark = pytest.mark.usefixtures("publisher")


@pytest.fixture
def token(chat_settings: ApiSettings) -> Any:
    def make(user: str) -> str:
        return issue_token(chat_settings, user, USER_SCOPES, tenant=TENANT)

    return make


def of_type(kind: str) -> Any:
    return lambda frame: frame["type"] == kind


async def live(*sockets: Socket) -> None:
    for socket in sockets:
        await socket.until(of_type("live"))


async def status_of(engine: AsyncEngine, message_id: str, user: str) -> str:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT status FROM chat_recipients WHERE message_id = :m AND user_id = :u"),
            {"m": message_id, "u": user},
        )
        return str(found.scalar_one())


async def test_two_users_on_two_replicas_exchange_messages_and_acks_deliver_them(
    replicas: Replicas, people: People, token: Any, engine: AsyncEngine
) -> None:
    one, two = await replicas(), await replicas()
    async with (
        opened(one.port, token=token("alice")) as alice,
        opened(two.port, token=token("bob")) as bob,
    ):
        await live(alice, bob)
        chat = await conversation(people("alice"), "direct", ("bob",))
        created = await alice.until(of_type("conversation.created"))
        assert created["data"]["conversationId"] == chat
        await bob.until(of_type("conversation.created"))
        message = await post(people("alice"), chat, "hi bob")
        frame = await bob.until(of_type("message.created"))
        shown = await call(people("alice"), "GET", f"/chat/messages/{message['id']}", 200)
        assert frame["data"] == shown  # the message as the API shows it (bob's GET would
        # deliver it: the ack is what this test is about)
        mine = await alice.until(of_type("message.created"))  # the sender's other devices
        assert mine["data"]["id"] == message["id"]
        assert await status_of(engine, message["id"], "bob") in ("PENDING", "SENT")
        await bob.send({"type": "ack", "messageIds": [message["id"]]})
        delivered = await alice.until(
            lambda f: f["type"] == "message.status" and f["data"]["status"] == "DELIVERED"
        )
        assert delivered["data"]["copies"] == [{"messageId": message["id"], "userId": "bob"}]
        assert await status_of(engine, message["id"], "bob") == "DELIVERED"
        await bob.send({"type": "ack", "messageIds": [message["id"]]})  # a repeat: nothing
        reply = await post(people("bob"), chat, "hi alice")
        got = await alice.until(of_type("message.created"))
        assert got["data"]["id"] == reply["id"]
        await alice.send({"type": "ack", "messageIds": [reply["id"], message["id"]]})
        await bob.until(
            lambda f: f["type"] == "message.status" and f["data"]["status"] == "DELIVERED"
        )
        assert await alice.quiet() == []  # the repeat told nobody anything


async def test_an_ack_cannot_touch_another_users_copy(
    replicas: Replicas, people: People, token: Any, engine: AsyncEngine
) -> None:
    replica = await replicas()
    chat = await conversation(people("alice"), "group", ("bob", "carol"))
    message = await post(people("alice"), chat)
    async with opened(replica.port, token=token("carol")) as carol:
        await live(carol)
        await carol.send({"type": "ack", "messageIds": [message["id"]]})

        async def carols() -> bool:
            return await status_of(engine, message["id"], "carol") == "DELIVERED"

        await eventually(carols)
    assert await status_of(engine, message["id"], "bob") in ("PENDING", "SENT")


async def test_a_kicked_member_stops_receiving_the_conversation_at_once(
    replicas: Replicas, people: People, token: Any
) -> None:
    replica = await replicas()
    chat = await conversation(people("alice"), "group", ("bob", "carol"))
    async with (
        opened(replica.port, token=token("bob")) as bob,
        opened(replica.port, token=token("carol")) as carol,
    ):
        await live(bob, carol)
        await post(people("alice"), chat, "before")
        await carol.until(of_type("message.created"))
        await kick(people("alice"), chat, "carol")
        kicked = await carol.until(of_type("member.kicked"))
        assert kicked["data"]["userId"] == "carol"
        await bob.until(of_type("member.kicked"))
        after = await post(people("alice"), chat, "after")
        got = await bob.until(of_type("message.created"))
        while got["data"]["text"] != "after":
            got = await bob.until(of_type("message.created"))
        assert got["data"]["id"] == after["id"]
        assert [f for f in await carol.quiet() if f["type"] == "message.created"] == []
    async with opened(replica.port, token=token("carol"), cursor=kicked["cursor"]) as again:
        await again.until(of_type("live"))
        assert "message.created" not in [f["type"] for f in again.frames]


async def test_a_resume_replays_the_messages_of_the_users_membership_intervals_only(
    replicas: Replicas, people: People, token: Any
) -> None:
    """A resume from before a join, across a kick and a re-add, gets the messages posted while
    the user was a member, and no other."""
    replica = await replicas()
    alice = people("alice")
    chat = await conversation(alice, "group", ("bob",))
    cursors = {}
    for user in ("alice", "bob", "carol"):
        async with opened(replica.port, token=token(user)) as socket:
            cursors[user] = (await socket.until(of_type("live")))["cursor"]
    await post(alice, chat, "one")
    await add(alice, chat, "carol")
    await post(alice, chat, "two")
    await kick(alice, chat, "bob")
    await post(alice, chat, "three")
    await add(alice, chat, "bob")
    await post(alice, chat, "four")
    expected = {
        "alice": ["one", "two", "three", "four"],
        "bob": ["one", "two", "four"],
        "carol": ["two", "three", "four"],
    }
    for user, texts in expected.items():
        async with opened(replica.port, token=token(user), cursor=cursors[user]) as again:
            await again.until(of_type("live"))
            replayed = [f for f in again.frames if f["type"] == "message.created"]
            assert [f["data"]["text"] for f in replayed] == texts, user


async def test_a_read_clears_the_readers_other_devices_and_tells_the_sender(
    replicas: Replicas, people: People, token: Any
) -> None:
    replica = await replicas()
    chat = await conversation(people("alice"), "direct", ("bob",))
    message = await post(people("alice"), chat)
    async with (
        opened(replica.port, token=token("alice")) as alice,
        opened(replica.port, token=token("bob")) as phone,
    ):
        await live(alice, phone)
        await read(people("bob"), message["id"])
        watermark = await phone.until(of_type("read"))
        assert watermark["data"] == {"conversationId": chat, "readUpToSeq": message["seq"]}
        status = await alice.until(of_type("message.status"))
        assert status["data"]["status"] == "READ"


async def test_fetching_history_delivers_and_the_sender_is_told(
    replicas: Replicas, people: People, token: Any
) -> None:
    replica = await replicas()
    chat = await conversation(people("alice"), "direct", ("bob",))
    message = await post(people("alice"), chat)
    async with opened(replica.port, token=token("alice")) as alice:
        await live(alice)
        await page(people("bob"), conversationId=chat)
        status = await alice.until(of_type("message.status"))
        assert status["data"]["status"] == "DELIVERED"
        assert status["data"]["copies"] == [{"messageId": message["id"], "userId": "bob"}]
