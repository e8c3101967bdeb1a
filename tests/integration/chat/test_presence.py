"""The consumer's `chat.deliver` with realtime sockets: a device with a live socket (a fresh
`chat_presence` row) is not pushed, a recipient whose every device is live is SENT with no
receipt deadline, a round forced to some devices (`deliver_payload(devices=…)`) pushes those
alone, live or not, once each; and every copy the consumer moves (SENT, FAILED, the receipt
deadline's FAILED) is announced to the sender in the transaction of the move.

The handler runs in the test's loop against a small gateway that answers by push token.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.chat.delivery import deliver_payload
from relaybox.common.messaging.topology import CHAT_DELIVER, Topology
from relaybox.common.outbox import DEAD, WORK
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.consumer.chat.handler import ChatDeliverHandler
from relaybox.consumer.errors import PoisonMessageError
from relaybox.consumer.providers.push import PushProvider, PushSettings
from tests.integration.chat.conftest import SEND_PATH, Gateway, People
from tests.integration.chat.support import call, conversation, post
from tests.integration.chat.test_events import (
    XID_LOW_BITS,
    Event,
    carried,
    copies_of,
    copy_xmin,
    status_events,
)
from tests.support.pipeline import consumer_settings

TOO_BIG = (400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "too big"}})
UNAVAILABLE = (503, {"error": {"code": 503, "status": "UNAVAILABLE", "message": "later"}})


@pytest.fixture
async def handler(
    engine: AsyncEngine,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    gateway: tuple[Gateway, str],
) -> AsyncIterator[ChatDeliverHandler]:
    """The `chat.deliver` handler (no rate limit) pushing to the test's gateway."""
    push = PushSettings(url=f"{gateway[1]}{SEND_PATH}")
    settings = consumer_settings(db_settings, broker_settings, 2525, push=push)
    provider = PushProvider(push)
    yield ChatDeliverHandler(engine, Topology.from_settings(broker_settings), settings, provider)
    await provider.close()


# --- the world --------------------------------------------------------------------------------


async def device(people: People, user: str, token: str) -> str:
    body = {"platform": "android", "pushToken": token}
    return str((await call(people(user), "POST", "/chat/devices", 201, json=body))["id"])


async def live(engine: AsyncEngine, user: str, device_id: str, seen_s_ago: float = 0.0) -> None:
    """A socket of `device_id` whose replica last saw it `seen_s_ago` seconds ago."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO chat_presence (connection_id, device_id, tenant_id, user_id, replica,"
                " seen_at) VALUES (:c, :d, 'acme', :u, 'r1',"
                " now() - make_interval(secs => :ago))"
            ),
            {"c": uuid.uuid4(), "d": device_id, "u": user, "ago": seen_s_ago},
        )


async def statuses(engine: AsyncEngine, message_id: str) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT user_id, status FROM chat_recipients WHERE message_id = :m"),
            {"m": message_id},
        )
        return {row[0]: row[1] for row in rows}


async def pushes(engine: AsyncEngine, message_id: str) -> dict[str, str]:
    """The message's recorded pushes: device id → status."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT device_id::text, status FROM chat_pushes WHERE message_id = :m"),
            {"m": message_id},
        )
        return {row[0]: row[1] for row in rows}


async def deliveries(engine: AsyncEngine, message_id: str) -> list[dict[str, Any]]:
    """The `chat.deliver` outbox rows of the message written after the post (destination and
    payload), in order."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT destination, payload FROM outbox WHERE routing_key = :k "
                "AND payload ->> 'messageId' = :m ORDER BY id"
            ),
            {"k": CHAT_DELIVER, "m": message_id},
        )
        return [dict(row) for row in rows.mappings()][1:]  # the post's own first


async def one_status(engine: AsyncEngine, status: str) -> Event:
    (found,) = await status_events(engine, status)
    assert found.audience == ["alice"]
    await carried(engine, found)
    return found


# --- presence ---------------------------------------------------------------------------------


async def test_a_live_device_is_not_pushed_and_an_all_live_recipient_is_sent(
    people: People, engine: AsyncEngine, handler: ChatDeliverHandler, gateway: tuple[Gateway, str]
) -> None:
    group = await conversation(people("alice"), members=("bob", "carol", "dave", "erin"))
    bob_phone = await device(people, "bob", "bob-phone")
    bob_laptop = await device(people, "bob", "bob-laptop")
    carol_phone = await device(people, "carol", "carol-phone")
    dave_phone = await device(people, "dave", "dave-phone")
    await live(engine, "bob", bob_phone)
    await live(engine, "carol", carol_phone)
    await live(engine, "dave", dave_phone, seen_s_ago=60)  # stale: its replica died (TTL 45 s)
    message = (await post(people("alice"), group))["id"]
    users = ["bob", "carol", "dave", "erin"]
    assert await handler.handle(deliver_payload(message, users), {}) == "sent"
    assert sorted(gateway[0].pushed) == ["bob-laptop", "dave-phone"]
    assert await pushes(engine, message) == {bob_laptop: "ACCEPTED", dave_phone: "ACCEPTED"}
    assert await statuses(engine, message) == dict.fromkeys(users, "SENT")
    # the receipt deadline covers the accepted pushes only: not carol, whose socket has it
    deadline, check = await deliveries(engine, message)
    assert deadline["payload"] == deliver_payload(message, ["bob", "dave"], confirm=True)
    # the socket check: what bob's and carol's live sockets have not acked by then is pushed
    assert check["payload"] == deliver_payload(
        message, ["bob", "carol"], devices=sorted([bob_phone, carol_phone])
    )
    sent = await one_status(engine, "SENT")
    assert copies_of(sent) == {(message, u) for u in users}
    assert await copy_xmin(engine, message, "carol") == sent.xid & XID_LOW_BITS
    # the same batch again: nothing to push, nothing to move, nothing written
    assert await handler.handle(deliver_payload(message, users), {}) == "duplicate"
    assert len(gateway[0].pushed) == 2 and len(await status_events(engine, "SENT")) == 1


async def test_a_forced_round_pushes_the_given_devices_live_or_not_once(
    people: People, engine: AsyncEngine, handler: ChatDeliverHandler, gateway: tuple[Gateway, str]
) -> None:
    group = await conversation(people("alice"), members=("bob",))
    phone = await device(people, "bob", "bob-phone")
    laptop = await device(people, "bob", "bob-laptop")
    await live(engine, "bob", phone)
    await live(engine, "bob", laptop)
    message = (await post(people("alice"), group))["id"]
    assert await handler.handle(deliver_payload(message, ["bob"]), {}) == "sent"
    assert gateway[0].pushed == [] and await statuses(engine, message) == {"bob": "SENT"}
    (check,) = await deliveries(engine, message)  # no push: no receipt deadline; the check
    assert check["payload"] == deliver_payload(message, ["bob"], devices=sorted([phone, laptop]))
    # a round forced to the phone alone pushes it, though its socket is live
    forced = deliver_payload(message, ["bob"], devices=[phone])
    assert await handler.handle(forced, {}) == "sent"
    assert gateway[0].pushed == ["bob-phone"]
    assert await pushes(engine, message) == {phone: "ACCEPTED"}
    (_check, deadline) = await deliveries(engine, message)
    assert deadline["payload"] == deliver_payload(message, ["bob"], confirm=True)
    assert len(await status_events(engine, "SENT")) == 1  # bob was SENT already: no move
    # a device is pushed a message once, forced or not
    assert await handler.handle(forced, {}) == "duplicate"
    assert await handler.handle(deliver_payload(message, ["bob"], devices=[phone.upper()]), {})
    assert gateway[0].pushed == ["bob-phone"]


async def test_a_forced_round_leaves_the_other_devices_to_the_messages_rounds(
    people: People, engine: AsyncEngine, handler: ChatDeliverHandler, gateway: tuple[Gateway, str]
) -> None:
    """A forced push that fails for good does not fail a copy whose other device is still to
    be pushed; the message's own round pushes that one."""
    group = await conversation(people("alice"), members=("carol",))
    phone = await device(people, "carol", "carol-phone")
    tablet = await device(people, "carol", "carol-tablet")
    gateway[0].answers["carol-phone"] = TOO_BIG
    message = (await post(people("alice"), group))["id"]
    forced = deliver_payload(message, ["carol"], devices=[phone])
    assert await handler.handle(forced, {}) == "sent"
    assert gateway[0].pushed == ["carol-phone"]
    assert await statuses(engine, message) == {"carol": "PENDING"}
    assert await status_events(engine, "FAILED") == []
    assert await handler.handle(deliver_payload(message, ["carol"]), {}) == "sent"
    assert gateway[0].pushed == ["carol-phone", "carol-tablet"]
    assert await pushes(engine, message) == {phone: "FAILED", tablet: "ACCEPTED"}
    assert copies_of(await one_status(engine, "SENT")) == {(message, "carol")}


async def test_a_forced_retry_stays_forced(
    people: People, engine: AsyncEngine, handler: ChatDeliverHandler, gateway: tuple[Gateway, str]
) -> None:
    group = await conversation(people("alice"), members=("bob",))
    phone = await device(people, "bob", "bob-phone")
    await device(people, "bob", "bob-laptop")
    gateway[0].answers["bob-phone"] = UNAVAILABLE
    message = (await post(people("alice"), group))["id"]
    forced = deliver_payload(message, ["bob"], devices=[phone])
    assert await handler.handle(forced, {}) == "retried"
    (retry,) = await deliveries(engine, message)
    assert retry["destination"] not in (WORK, DEAD)
    assert retry["payload"] == {**forced, "attempt": 2}
    assert gateway[0].pushed == ["bob-phone"]  # not the laptop: the message's round will


@pytest.mark.parametrize("devices", ["not-a-list", [7], ["not-a-uuid"]])
async def test_a_malformed_devices_list_is_poison(
    handler: ChatDeliverHandler, devices: Any
) -> None:
    payload = {**deliver_payload(str(uuid.uuid4()), ["bob"]), "devices": devices}
    with pytest.raises(PoisonMessageError, match="devices"):
        await handler.handle(payload, {})


def test_the_deliver_payload_carries_the_forced_devices() -> None:
    assert deliver_payload("m", ["u"]) == {"messageId": "m", "recipients": ["u"]}
    assert deliver_payload("m", ["u"], devices=["d"]) == {
        "messageId": "m",
        "recipients": ["u"],
        "devices": ["d"],
    }


# --- the consumer's moves are announced ------------------------------------------------------


async def test_failed_copies_tell_the_sender(
    people: People, engine: AsyncEngine, handler: ChatDeliverHandler, gateway: tuple[Gateway, str]
) -> None:
    group = await conversation(people("alice"), members=("bob", "dave"))
    await device(people, "bob", "bob-phone")
    await device(people, "dave", "dave-phone")
    gateway[0].answers["dave-phone"] = TOO_BIG
    message = (await post(people("alice"), group))["id"]
    assert await handler.handle(deliver_payload(message, ["bob", "dave"]), {}) == "sent"
    assert await statuses(engine, message) == {"bob": "SENT", "dave": "FAILED"}
    failed = await one_status(engine, "FAILED")
    sent = await one_status(engine, "SENT")
    assert copies_of(failed) == {(message, "dave")} and copies_of(sent) == {(message, "bob")}
    assert failed.conversation_id == group and failed.data["conversationId"] == group
    assert failed.xid == sent.xid  # one round, one transaction
    assert await copy_xmin(engine, message, "dave") == failed.xid & XID_LOW_BITS


async def test_the_receipt_deadline_tells_the_sender(
    people: People, engine: AsyncEngine, handler: ChatDeliverHandler
) -> None:
    group = await conversation(people("alice"), members=("bob", "carol"))
    await device(people, "bob", "bob-phone")
    await device(people, "carol", "carol-phone")
    message = (await post(people("alice"), group))["id"]
    await handler.handle(deliver_payload(message, ["bob", "carol"]), {})
    await call(people("carol"), "GET", f"/chat/messages/{message}", 200)  # carol has it
    deadline = deliver_payload(message, ["bob", "carol"], confirm=True)
    assert await handler.handle(deadline, {}) == "unconfirmed"
    assert await statuses(engine, message) == {"bob": "FAILED", "carol": "DELIVERED"}
    failed = await one_status(engine, "FAILED")
    assert copies_of(failed) == {(message, "bob")}
    assert await copy_xmin(engine, message, "bob") == failed.xid & XID_LOW_BITS
    assert await handler.handle(deadline, {}) == "duplicate"
    assert len(await status_events(engine, "FAILED")) == 1


async def test_the_socket_check_pushes_what_a_live_socket_did_not_ack(
    people: People, engine: AsyncEngine, handler: ChatDeliverHandler, gateway: tuple[Gateway, str]
) -> None:
    """Bob's and carol's sockets were live when the message was routed; carol's acked it, bob's
    dropped first: when the check comes due bob's phone is pushed after all, carol's is not."""
    group = await conversation(people("alice"), members=("bob", "carol"))
    bob_phone = await device(people, "bob", "bob-phone")
    carol_phone = await device(people, "carol", "carol-phone")
    await live(engine, "bob", bob_phone)
    await live(engine, "carol", carol_phone)
    message = (await post(people("alice"), group))["id"]
    assert await handler.handle(deliver_payload(message, ["bob", "carol"]), {}) == "sent"
    assert gateway[0].pushed == []
    (check,) = await deliveries(engine, message)
    async with engine.begin() as conn:  # carol's socket acked; bob's socket went away
        await conn.execute(
            text(
                "UPDATE chat_recipients SET status = 'DELIVERED', delivered_at = now() "
                "WHERE message_id = :m AND user_id = 'carol'"
            ),
            {"m": message},
        )
        await conn.execute(text("DELETE FROM chat_presence WHERE user_id = 'bob'"))
    assert await handler.handle(check["payload"], {}) == "sent"
    assert gateway[0].pushed == ["bob-phone"]
    assert await pushes(engine, message) == {bob_phone: "ACCEPTED"}
    assert await statuses(engine, message) == {"bob": "SENT", "carol": "DELIVERED"}
    (_check, deadline) = await deliveries(engine, message)  # no second check: forced rounds
    assert deadline["payload"] == deliver_payload(message, ["bob"], confirm=True)  # write none
    assert await handler.handle(check["payload"], {}) == "duplicate"  # pushed once


async def test_a_socket_check_of_acked_copies_pushes_nothing(
    people: People, engine: AsyncEngine, handler: ChatDeliverHandler, gateway: tuple[Gateway, str]
) -> None:
    group = await conversation(people("alice"), members=("bob",))
    phone = await device(people, "bob", "bob-phone")
    await live(engine, "bob", phone)
    message = (await post(people("alice"), group))["id"]
    assert await handler.handle(deliver_payload(message, ["bob"]), {}) == "sent"
    (check,) = await deliveries(engine, message)
    await call(people("bob"), "POST", f"/chat/messages/{message}/read", 200)
    assert await handler.handle(check["payload"], {}) == "duplicate"
    assert gateway[0].pushed == []
