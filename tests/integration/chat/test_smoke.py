"""A first walk through the messenger: a group, a post, history, read, receipts."""

from __future__ import annotations

from tests.integration.chat.conftest import People


async def test_group_walkthrough(people: People) -> None:
    alice, bob, carol = people("alice"), people("bob"), people("carol")
    r = await alice.post(
        "/chat/conversations", json={"kind": "group", "title": "Team", "members": ["bob"]}
    )
    assert r.status_code == 201, r.text
    conv = r.json()
    assert {m["userId"] for m in conv["members"]} == {"alice", "bob"}
    r = await alice.post(
        "/chat/messages",
        json={"conversationId": conv["id"], "text": "hello team", "clientMessageId": "m1"},
    )
    assert r.status_code == 202, r.text
    m1 = r.json()
    assert m1["seq"] == 1
    r = await alice.post(
        "/chat/messages",
        json={"conversationId": conv["id"], "text": "hello team", "clientMessageId": "m1"},
    )
    assert r.status_code == 200 and r.json()["id"] == m1["id"]
    r = await bob.get("/chat/conversations")
    assert r.status_code == 200, r.text
    (mine,) = r.json()["data"]
    assert mine["unreadCount"] == 1 and mine["lastMessage"]["text"] == "hello team"
    r = await carol.get("/chat/messages", params={"conversationId": conv["id"]})
    assert r.status_code == 404, r.text
    r = await alice.post(f"/chat/conversations/{conv['id']}/members", json={"userId": "carol"})
    assert r.status_code == 201, r.text
    r = await carol.get("/chat/messages", params={"conversationId": conv["id"]})
    assert r.status_code == 200 and r.json()["data"] == []
    r = await bob.get("/chat/messages", params={"conversationId": conv["id"], "q": "team"})
    assert [m["id"] for m in r.json()["data"]] == [m1["id"]]
    r = await bob.post(f"/chat/messages/{m1['id']}/read")
    assert r.status_code == 200, r.text
    assert r.json()["markedRead"] == 1 and r.json()["readUpToSeq"] == 1
    r = await bob.get("/chat/conversations")
    assert r.json()["data"][0]["unreadCount"] == 0
    r = await alice.get(f"/chat/messages/{m1['id']}/receipts")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["summary"]["read"] == 1 and body["recipients"][0]["userId"] == "bob"
    r = await bob.get(f"/chat/messages/{m1['id']}/receipts")
    assert r.status_code == 403
