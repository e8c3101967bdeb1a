"""The history rule on every read path: a group member sees the messages posted while they were a
member (each interval; the gap between a leave and a re-join stays hidden), a former member keeps
their intervals, a channel is readable by all of its tenant but writable by members only."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.integration.chat.conftest import People
from tests.integration.chat.support import (
    add,
    call,
    conversation,
    inbox,
    join,
    kick,
    leave,
    page,
    post,
    read,
    receipts,
    search,
    seqs,
    unread,
    word,
)


@dataclass
class Gap:
    """A group whose members came and went: `ids[seq]` is message `seq` (each holds `planted`).

    1 — alice posts; bob is a member, carol not yet (she is added after it).
    2 — bob has left: the gap he cannot see.
    3 — bob re-joined: everyone sees it.
    4 — carol was kicked: she cannot see it.
    dave was never a member.
    """

    conversation: str
    ids: dict[int, str]
    planted: str


SEES = {"alice": [1, 2, 3, 4], "bob": [1, 3, 4], "carol": [2, 3]}


@pytest.fixture
async def gap(people: People) -> Gap:
    alice, bob = people("alice"), people("bob")
    planted = word()
    group = await conversation(alice, members=("bob",))
    ids = {1: (await post(alice, group, f"before {planted}"))["id"]}
    await add(alice, group, "carol")
    await leave(bob, group)
    ids[2] = (await post(alice, group, f"gap {planted}"))["id"]
    await join(bob, group)  # re-joining a group one left
    ids[3] = (await post(alice, group, f"after {planted}"))["id"]
    await kick(alice, group, "carol")
    ids[4] = (await post(alice, group, f"kicked {planted}"))["id"]
    return Gap(group, ids, planted)


async def test_the_history_list_shows_each_interval_and_hides_the_gaps(
    people: People, gap: Gap
) -> None:
    for user, visible in SEES.items():
        assert await seqs(people(user), gap.conversation) == visible, user
    await page(people("dave"), 404, conversationId=gap.conversation)
    await page(people("dave"), 404, conversationId=gap.conversation, q=gap.planted)
    await call(people("dave"), "GET", f"/chat/conversations/{gap.conversation}", 404)


async def test_one_message_is_404_outside_the_readers_intervals(people: People, gap: Gap) -> None:
    for user in (*SEES, "dave"):
        for seq, message_id in gap.ids.items():
            seen = seq in SEES.get(user, [])
            found = await call(
                people(user), "GET", f"/chat/messages/{message_id}", 200 if seen else 404
            )
            assert not seen or found["seq"] == seq


async def test_search_never_finds_a_hidden_message(people: People, gap: Gap) -> None:
    alice = people("alice")
    # The same word elsewhere: a group without bob, and another tenant's channel.
    elsewhere = await conversation(alice, members=("carol",))
    await post(alice, elsewhere, f"private {gap.planted}")
    foreign = people("alice", tenant="globex")
    channel = await conversation(foreign, kind="channel")
    await post(foreign, channel, f"foreign {gap.planted}")
    for user, visible in SEES.items():
        expected = {gap.ids[seq] for seq in visible}
        client = people(user)
        assert await search(client, gap.planted, gap.conversation) == expected, user
        everywhere = await search(client, gap.planted)
        assert everywhere & set(gap.ids.values()) == expected, user
        assert len(everywhere) == len(expected) + (user in ("alice", "carol")), user
        # Search syntax (or, phrases, exclusions) narrows a search; it never widens it.
        for q in (f"{gap.planted} or gap", f'"gap {gap.planted}"', f"gap -nothing {gap.planted}"):
            assert await search(client, q, gap.conversation) <= expected, (user, q)
    assert await search(people("dave"), gap.planted) == set()
    assert await search(foreign, gap.planted) == {
        m["id"] for m in (await page(foreign, conversationId=channel))["data"]
    }


async def test_the_last_message_is_one_the_reader_may_see(people: People, gap: Gap) -> None:
    for user in ("alice", "bob"):
        listed = (await inbox(people(user)))[gap.conversation]
        assert listed["lastMessage"]["id"] == gap.ids[4], user
    # carol, kicked, is no longer listed; the conversation itself shows her the last message of
    # her intervals (3), never the one posted after she was removed (4).
    assert gap.conversation not in await inbox(people("carol"))
    detail = await call(people("carol"), "GET", f"/chat/conversations/{gap.conversation}", 200)
    assert detail["role"] is None and detail["unreadCount"] == 0
    assert detail["lastMessage"]["id"] == gap.ids[3]


async def test_unread_counts_only_what_the_reader_may_see(people: People, gap: Gap) -> None:
    assert await unread(people("alice"), gap.conversation) == 0  # she wrote all of it
    assert await unread(people("bob"), gap.conversation) == 2  # 3 and 4: not the gap
    assert await unread(people("carol"), gap.conversation) == 0  # not a member any more


async def test_receipts_list_the_recipients_of_each_interval(people: People, gap: Gap) -> None:
    recipients = {
        seq: {r["userId"] for r in (await receipts(people("alice"), message_id))["recipients"]}
        for seq, message_id in gap.ids.items()
    }
    assert recipients == {1: {"bob"}, 2: {"carol"}, 3: {"bob", "carol"}, 4: {"bob"}}
    for user in ("bob", "carol", "dave"):
        for seq, message_id in gap.ids.items():
            seen = seq in SEES.get(user, [])
            await receipts(people(user), message_id, 403 if seen else 404)  # not the sender


async def test_a_read_reaches_only_visible_messages(people: People, gap: Gap) -> None:
    bob, carol = people("bob"), people("carol")
    await read(bob, gap.ids[2], 404)
    await read(carol, gap.ids[4], 404)
    await read(carol, gap.ids[1], 404)
    done = await read(bob, gap.ids[4])
    assert done["markedRead"] == 3 and done["readUpToSeq"] == 4  # his copies of 1, 3, 4
    done = await read(carol, gap.ids[3])
    assert done["markedRead"] == 2 and done["readUpToSeq"] is None  # 2, 3; no membership now
    statuses = {
        r["userId"]: r["status"]
        for r in (await receipts(people("alice"), gap.ids[3]))["recipients"]
    }
    assert statuses == {"bob": "READ", "carol": "READ"}


async def test_a_late_joiner_sees_nothing_before_the_join(people: People) -> None:
    alice, bob = people("alice"), people("bob")
    planted = word()
    group = await conversation(alice)
    early = await post(alice, group, f"early {planted}")
    await add(alice, group, "bob")
    assert await seqs(bob, group) == []
    assert await search(bob, planted) == set()
    assert (await inbox(bob))[group]["lastMessage"] is None
    assert await unread(bob, group) == 0
    await call(bob, "GET", f"/chat/messages/{early['id']}", 404)
    late = await post(alice, group, f"late {planted}")
    assert await seqs(bob, group) == [2]
    assert await search(bob, planted) == {late["id"]}
    assert await unread(bob, group) == 1


async def test_a_kicked_member_rejoins_a_group_only_when_added_again(people: People) -> None:
    alice, bob = people("alice"), people("bob")
    group = await conversation(alice, members=("bob",))
    await post(bob, group, "mine")
    await kick(alice, group, "bob")
    await post(bob, group, status=403)
    await join(bob, group, 403)
    await post(alice, group, "while away")
    await add(alice, group, "bob")
    # Back, nothing new yet: his last message is the end of his first interval, not 2.
    assert (await inbox(bob))[group]["lastMessage"]["seq"] == 1
    assert await unread(bob, group) == 0
    await post(bob, group, "back")
    assert await seqs(bob, group) == [1, 3]
    # A member who left on their own may re-join; one who never was a member may not.
    await leave(bob, group)
    await join(bob, group)
    await join(bob, group, 200)  # already a member
    await join(people("dave"), group, 404)


async def test_a_channel_reader_sees_everything_and_posts_nothing(people: People) -> None:
    alice, erin = people("alice"), people("erin")
    planted = word()
    channel = await conversation(alice, kind="channel")
    first = await post(alice, channel, f"hello {planted}")
    assert await seqs(erin, channel) == [1]
    await call(erin, "GET", f"/chat/messages/{first['id']}", 200)
    assert await search(erin, planted, channel) == {first["id"]} == await search(erin, planted)
    (listed,) = [
        c for c in (await call(erin, "GET", "/chat/channels", 200))["data"] if c["id"] == channel
    ]
    assert listed["role"] is None and listed["lastMessage"]["id"] == first["id"]
    assert channel not in await inbox(erin)
    assert await unread(erin, channel) == 0
    done = await read(erin, first["id"])
    assert done["markedRead"] == 0 and done["readUpToSeq"] is None
    await receipts(erin, first["id"], 403)
    await post(erin, channel, status=403)
    await leave(erin, channel, 403)  # not a member
    # Joined, a reader posts; left again, they read all of it still but post nothing.
    await join(erin, channel)
    await post(erin, channel, "joined")
    await leave(erin, channel)
    await post(alice, channel, "after erin left")
    assert await seqs(erin, channel) == [1, 2, 3]
    await post(erin, channel, status=403)
    # Kicked, they still read (the channel is public) but join again only when added.
    await join(erin, channel)
    await kick(alice, channel, "erin")
    await join(erin, channel, 403)
    assert await seqs(erin, channel) == [1, 2, 3]
    await add(alice, channel, "erin")
    await post(erin, channel, "back")
    # Another tenant sees none of it.
    stranger = people("erin", tenant="globex")
    await call(stranger, "GET", f"/chat/conversations/{channel}", 404)
    await join(stranger, channel, 404)
    assert await search(stranger, planted) == set()
    listed_there = (await call(stranger, "GET", "/chat/channels", 200))["data"]
    assert channel not in {c["id"] for c in listed_there}
