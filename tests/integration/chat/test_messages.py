"""Messages end to end: idempotent posts, bad input, paging, read watermarks, the DELIVERED mark
a fetch gives, unread counts after every kind of event, receipts, and push devices."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.chat.conftest import People
from tests.integration.chat.support import (
    add,
    call,
    conversation,
    copies,
    join,
    kick,
    leave,
    page,
    post,
    read,
    receipts,
    search,
    unread,
    word,
)


async def _post_as(
    client: httpx.AsyncClient, body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return await client.post("/chat/messages", json=body, headers=headers)


async def _set_status(engine: AsyncEngine, message_id: str, user: str, status: str) -> None:
    """What the consumer records: SENT (handed to the push provider) or FAILED (with why)."""
    stamp = {"SENT": "sent_at", "FAILED": "failed_at"}[status]
    error = "every device refused it" if status == "FAILED" else None
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"UPDATE chat_recipients SET status = :s, {stamp} = now(), last_error = :e "
                "WHERE message_id = :m AND user_id = :u"
            ),
            {"s": status, "e": error, "m": message_id, "u": user},
        )


async def test_a_repeated_client_message_id_answers_the_stored_message(people: People) -> None:
    alice, bob = people("alice"), people("bob")
    group = await conversation(alice, members=("bob",))
    other = await conversation(alice, members=("bob",))
    body = {"conversationId": group, "text": "once", "clientMessageId": "c-1"}
    first = await _post_as(alice, body)
    assert first.status_code == 202, first.text
    again = await _post_as(alice, {**body, "text": "twice?"})
    assert again.status_code == 200 and again.json() == first.json()
    assert [m["text"] for m in (await page(bob, conversationId=group))["data"]] == ["once"]
    # The id names one message of alice's: in another conversation it is refused...
    refused = await _post_as(alice, {**body, "conversationId": other})
    assert refused.status_code == 409 and refused.json()["field"] == "clientMessageId"
    # ...and it is hers alone: bob, or alice of another organisation, post their own.
    assert (await _post_as(bob, body)).status_code == 202
    foreign = people("alice", tenant="globex")
    theirs = await conversation(foreign, members=("bob",))
    answer = await _post_as(foreign, {**body, "conversationId": theirs})
    assert answer.status_code == 202 and answer.json()["id"] != first.json()["id"]


async def test_an_idempotency_key_replays_the_stored_answer(people: People) -> None:
    alice = people("alice")
    group = await conversation(alice, members=("bob",))
    body = {"conversationId": group, "text": "keyed"}
    first = await _post_as(alice, body, key="k-1")
    assert first.status_code == 202, first.text
    again = await _post_as(alice, body, key="k-1")
    assert again.status_code == 202 and again.json() == first.json()
    different = await _post_as(alice, {**body, "text": "other"}, key="k-1")
    assert different.status_code == 422, different.text
    assert len((await page(alice, conversationId=group))["data"]) == 1
    assert (await _post_as(people("bob"), body, key="k-1")).status_code == 202  # bob's key
    # The same subject in another organisation has keys of its own: the key neither replays
    # acme's message to it nor refuses its own request.
    foreign = people("alice", tenant="globex")
    replay = await _post_as(foreign, body, key="k-1")
    assert replay.status_code == 404, replay.text  # acme's conversation, not a stored answer
    theirs = await conversation(foreign)
    own = await _post_as(foreign, {"conversationId": theirs, "text": "keyed"}, key="k-1")
    assert own.status_code == 202, own.text


BAD_POSTS: list[tuple[str, dict[str, Any], str]] = [
    ("no text, no attachments", {}, "body"),
    ("null text", {"text": None}, "body"),
    ("empty text", {"text": ""}, "text"),
    ("blank text", {"text": " \n\t"}, "text"),
    ("a NUL in the text", {"text": "a\x00b"}, "text"),
    ("too long", {"text": "x" * 4097}, "text"),
    ("an extra field", {"text": "x", "colour": "red"}, "colour"),
    ("an attachment id that is no uuid", {"text": "x", "attachmentIds": ["nope"]}, ""),
    ("a clientMessageId of two lines", {"text": "x", "clientMessageId": "a\nb"}, ""),
    ("too many attachments", {"text": "x", "attachmentIds": [None] * 11}, "attachmentIds"),
]


@pytest.mark.parametrize(("case", "fields", "field"), BAD_POSTS, ids=[c[0] for c in BAD_POSTS])
async def test_a_bad_post_is_a_400_naming_the_field(
    people: People, case: str, fields: dict[str, Any], field: str
) -> None:
    alice = people("alice")
    group = await conversation(alice)
    answer = await _post_as(alice, {"conversationId": group, **fields})
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["field"].startswith(field), answer.json()
    assert (await page(alice, conversationId=group))["data"] == []


async def test_bad_input_elsewhere_is_a_4xx(people: People) -> None:
    alice = people("alice")
    group = await conversation(alice, members=("bob",))
    message = await post(alice, group)
    members = f"/chat/conversations/{group}/members"
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", "/chat/messages", {"json": {"text": "x"}}, 400),  # no conversation
        ("POST", "/chat/messages", {"json": {"conversationId": "nope", "text": "x"}}, 400),
        ("POST", "/chat/messages", {"content": b"{", "headers": _json()}, 400),
        ("POST", "/chat/messages", {"json": [1]}, 400),
        (
            "POST",
            "/chat/messages",
            {"json": {"conversationId": group, "text": "x"}, "headers": {"Idempotency-Key": "a b"}},
            400,
        ),
        ("GET", "/chat/messages", {}, 400),  # no conversation
        ("GET", "/chat/messages", {"params": {"conversationId": "nope"}}, 400),
        ("GET", "/chat/messages", {"params": {"conversationId": group, "q": "a\x00b"}}, 400),
        ("GET", "/chat/messages", {"params": {"conversationId": group, "q": ""}}, 400),
        ("GET", "/chat/messages", {"params": {"conversationId": group, "before": -1}}, 400),
        ("GET", "/chat/messages", {"params": {"conversationId": group, "after": 2**63}}, 400),
        ("GET", "/chat/messages", {"params": {"conversationId": group, "limit": 0}}, 400),
        ("GET", "/chat/messages", {"params": {"conversationId": group, "limit": 101}}, 400),
        ("GET", "/chat/search", {}, 400),  # no q
        ("GET", "/chat/search", {"params": {"q": "x" * 257}}, 400),
        ("GET", "/chat/search", {"params": {"q": ""}}, 400),
        ("GET", "/chat/search", {"params": {"q": "a\x00b"}}, 400),
        ("GET", "/chat/search", {"params": {"q": "x", "cursor": "garbage"}}, 400),
        ("GET", "/chat/messages/nope", {}, 404),
        ("POST", "/chat/conversations", {"json": {"kind": "room"}}, 400),
        ("POST", "/chat/conversations", {"json": {"kind": "channel"}}, 400),  # no title
        ("POST", "/chat/conversations", {"json": {"kind": "direct", "members": ["alice"]}}, 400),
        (
            "POST",
            "/chat/conversations",
            {"json": {"kind": "direct", "title": "t", "members": ["bob"]}},
            400,
        ),
        ("POST", "/chat/conversations", {"json": {"kind": "group", "members": [""]}}, 400),
        ("POST", "/chat/conversations", {"json": {"kind": "group", "members": ["a\x00"]}}, 400),
        ("POST", members, {"json": {"userId": "carol", "role": "king"}}, 400),
        ("POST", members, {"json": {"userId": "a\nb"}}, 400),
        ("PATCH", f"{members}/bob", {"json": {"role": "admin", "x": 1}}, 400),
        ("DELETE", f"{members}/a%00b", {}, 400),
        ("PATCH", f"{members}/a%00b", {"json": {"role": "admin"}}, 400),
        ("DELETE", f"{members}/alice", {}, 409),  # removing yourself is leaving: the only owner
        ("POST", "/chat/devices", {"json": {"platform": "nokia", "pushToken": "t"}}, 400),
        ("POST", "/chat/devices", {"json": {"platform": "ios", "pushToken": "a\x00b"}}, 400),
        ("POST", f"/chat/messages/{message['id']}/read", {"json": {"x": 1}}, 200),  # no body
    ]
    answers = [(m, u, (await alice.request(m, u, **kw)).status_code) for m, u, kw, _ in cases]
    assert answers == [(m, u, status) for m, u, _, status in cases]


def _json() -> dict[str, str]:
    return {"content-type": "application/json"}


async def test_paging_walks_120_messages_with_before_and_after(people: People) -> None:
    alice = people("alice")
    group = await conversation(alice, members=("bob",))
    for n in range(1, 121):
        await post(alice, group, f"message {n}")

    async def walk(**params: Any) -> list[list[int]]:
        pages, before = [], None
        while True:
            query = {"conversationId": group, "limit": 50, **params}
            if before is not None:
                query["before"] = before
            found = await page(people("bob"), **query)
            pages.append([m["seq"] for m in found["data"]])
            before = found["nextBefore"]
            if before is None:
                return pages
            assert before == pages[-1][-1]

    assert await walk() == [
        list(range(120, 70, -1)),
        list(range(70, 20, -1)),
        list(range(20, 0, -1)),
    ]
    assert await walk(after=10) == [
        list(range(120, 70, -1)),
        list(range(70, 20, -1)),
        list(range(20, 10, -1)),
    ]
    assert await walk(after=100) == [list(range(120, 100, -1))]
    assert await walk(after=120) == [[]]
    assert await walk(limit=100, before=2) == [[1]]
    assert [
        m["text"] for m in (await page(people("bob"), conversationId=group, limit=1))["data"]
    ] == ["message 120"]


async def test_a_read_moves_the_watermark_forward_only(people: People, engine: AsyncEngine) -> None:
    alice, bob = people("alice"), people("bob")
    group = await conversation(alice, members=("bob",))
    ids = [(await post(alice, group, f"m{n}"))["id"] for n in range(1, 6)]
    await _set_status(engine, ids[0], "bob", "FAILED")  # FAILED → READ is allowed
    done = await read(bob, ids[3])
    assert done == {
        "conversationId": group,
        "messageId": ids[3],
        "seq": 4,
        "markedRead": 4,  # every earlier copy too
        "readUpToSeq": 4,
    }
    assert await copies(engine, group, "bob") == {
        1: "READ",
        2: "READ",
        3: "READ",
        4: "READ",
        5: "PENDING",
    }
    first_reads = {r["userId"]: r["readAt"] for r in (await receipts(alice, ids[1]))["recipients"]}
    # An older message read later changes nothing: the watermark stays, the first time stays.
    done = await read(bob, ids[1])
    assert done["markedRead"] == 0 and done["readUpToSeq"] == 4
    assert await unread(bob, group) == 1
    await read(bob, ids[3])
    assert {
        r["userId"]: r["readAt"] for r in (await receipts(alice, ids[1]))["recipients"]
    } == first_reads
    done = await read(bob, ids[4])
    assert done["markedRead"] == 1 and done["readUpToSeq"] == 5
    assert await unread(bob, group) == 0
    # A former member still reads what they kept; they have no watermark any more.
    await leave(bob, group)
    done = await read(bob, ids[4])
    assert done["markedRead"] == 0 and done["readUpToSeq"] is None


async def test_a_fetch_marks_copies_delivered_and_never_back(
    people: People, engine: AsyncEngine
) -> None:
    alice, bob = people("alice"), people("bob")
    group = await conversation(alice, members=("bob",))
    planted = word()
    ids = [(await post(alice, group, f"{planted} {n}"))["id"] for n in range(1, 5)]
    await _set_status(engine, ids[1], "bob", "SENT")
    await _set_status(engine, ids[2], "bob", "FAILED")
    await read(bob, ids[0])  # 1: READ
    assert await copies(engine, group, "bob") == {1: "READ", 2: "SENT", 3: "FAILED", 4: "PENDING"}
    await call(bob, "GET", f"/chat/messages/{ids[3]}", 200)
    assert (await copies(engine, group, "bob"))[4] == "DELIVERED"
    await search(bob, planted)  # a search is a fetch too
    assert await copies(engine, group, "bob") == {
        1: "READ",  # forward only: a fetch never takes READ back
        2: "DELIVERED",
        3: "DELIVERED",  # FAILED → DELIVERED: the client does have it
        4: "DELIVERED",
    }
    shown = {r["userId"]: r for r in (await receipts(alice, ids[2]))["recipients"]}
    assert shown["bob"]["deliveredAt"] is not None and shown["bob"]["failedAt"] is not None
    await page(alice, conversationId=group)  # the sender has no copies: nothing changes
    assert await copies(engine, group, "alice") == {}


async def test_unread_counts_follow_every_kind_of_event(people: People) -> None:
    alice, bob, carol = people("alice"), people("bob"), people("carol")
    group = await conversation(alice, members=("bob",))

    async def counts() -> dict[str, int]:
        found = {}
        for user, client in (("alice", alice), ("bob", bob), ("carol", carol)):
            detail = await client.get(f"/chat/conversations/{group}")
            found[user] = await unread(client, group) if detail.status_code == 200 else -1
        return found

    await post(alice, group, "one")
    await post(alice, group, "two")
    assert await counts() == {"alice": 0, "bob": 2, "carol": -1}  # others' posts count
    last = await post(bob, group, "three")  # replying reads what came before
    assert await counts() == {"alice": 1, "bob": 0, "carol": -1}
    await read(alice, last["id"])
    assert await counts() == {"alice": 0, "bob": 0, "carol": -1}
    await post(alice, group, "four")
    await leave(bob, group)  # a former member has no unread count
    assert await counts() == {"alice": 0, "bob": 0, "carol": -1}
    await post(alice, group, "five (bob away)")
    await join(bob, group)  # a re-join starts at the conversation's end
    assert await counts() == {"alice": 0, "bob": 0, "carol": -1}
    await post(alice, group, "six")
    assert await counts() == {"alice": 0, "bob": 1, "carol": -1}
    await add(alice, group, "carol")  # a new member starts at the end too
    assert await counts() == {"alice": 0, "bob": 1, "carol": 0}
    await post(alice, group, "seven")
    assert await counts() == {"alice": 0, "bob": 2, "carol": 1}
    await kick(alice, group, "carol")
    assert await counts() == {"alice": 0, "bob": 2, "carol": 0}
    await post(bob, group, "eight")
    assert await counts() == {"alice": 1, "bob": 0, "carol": 0}


async def test_receipts_summarise_each_recipient(people: People, engine: AsyncEngine) -> None:
    alice, bob, carol = people("alice"), people("bob"), people("carol")
    group = await conversation(alice, members=("bob", "carol", "dave"))
    message = await post(alice, group, "hello all")
    empty = {"pending": 3, "sent": 0, "delivered": 0, "read": 0, "failed": 0, "total": 3}
    assert (await receipts(alice, message["id"]))["summary"] == empty
    await read(bob, message["id"])
    await call(carol, "GET", f"/chat/messages/{message['id']}", 200)
    await _set_status(engine, message["id"], "dave", "FAILED")
    found = await receipts(alice, message["id"])
    assert found["summary"] == {
        "total": 3,
        "pending": 0,
        "sent": 0,
        "delivered": 1,
        "read": 1,
        "failed": 1,
    }
    shown = {r["userId"]: r for r in found["recipients"]}
    assert [shown[u]["status"] for u in ("bob", "carol", "dave")] == ["READ", "DELIVERED", "FAILED"]
    assert shown["bob"]["readAt"] is not None and shown["carol"]["readAt"] is None
    assert shown["dave"]["lastError"] == "every device refused it"
    # A member who did not send it may not see them; an admin of the conversation may.
    await receipts(bob, message["id"], 403)
    await call(
        alice, "PATCH", f"/chat/conversations/{group}/members/carol", 200, json={"role": "admin"}
    )
    assert (await receipts(carol, message["id"]))["summary"]["total"] == 3


async def test_devices_register_list_remove_and_move(people: People) -> None:
    alice, bob = people("alice"), people("bob")
    token = f"push-token-{word()}"
    first = await call(
        alice, "POST", "/chat/devices", 201, json={"platform": "ios", "pushToken": token}
    )
    assert first["tokenSuffix"] == token[-6:] and token not in str(first)
    again = await call(
        alice, "POST", "/chat/devices", 200, json={"platform": "android", "pushToken": token}
    )
    assert again["id"] == first["id"] and again["platform"] == "android"
    assert [d["id"] for d in await call(alice, "GET", "/chat/devices", 200)] == [first["id"]]
    # The device changed hands: bob registers its token, it is his (a new id), no longer hers.
    moved = await call(
        bob, "POST", "/chat/devices", 201, json={"platform": "ios", "pushToken": token}
    )
    assert moved["id"] != first["id"]
    assert await call(alice, "GET", "/chat/devices", 200) == []
    assert [d["id"] for d in await call(bob, "GET", "/chat/devices", 200)] == [moved["id"]]
    await call(alice, "DELETE", f"/chat/devices/{first['id']}", 404)
    await call(alice, "DELETE", f"/chat/devices/{moved['id']}", 404)  # not hers
    # Another organisation cannot take it over while it is registered here.
    foreign = people("bob", tenant="globex")
    await call(foreign, "POST", "/chat/devices", 409, json={"platform": "ios", "pushToken": token})
    await call(foreign, "DELETE", f"/chat/devices/{moved['id']}", 404)
    await call(bob, "DELETE", f"/chat/devices/{moved['id']}", 204)
    await call(bob, "DELETE", f"/chat/devices/{moved['id']}", 404)
    assert await call(bob, "GET", "/chat/devices", 200) == []
    await call(foreign, "POST", "/chat/devices", 201, json={"platform": "ios", "pushToken": token})
