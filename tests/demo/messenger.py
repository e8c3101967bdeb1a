"""Scene 4: a messenger exchange with receipts: alice makes a group with bob, bob is on the
realtime stream (`StreamClient`, acking what he takes), alice posts, bob's copy goes DELIVERED
through his ack, bob reads it: READ; alice's receipts and her own stream show each step."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from relaybox.realtime.client import StreamClient, ticket_source
from tests.demo.http import Json, StateLog, call, poll
from tests.demo.report import Section
from tests.demo.stack import Stack

TIMEOUT_S = 60.0


class Listener:
    """One user's stream, its events collected in the background."""

    def __init__(self, client: StreamClient) -> None:
        self.client = client
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self.started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def _collect(self) -> None:
        async for frame in self.client.events():
            self.frames.append((time.monotonic() - self.started, frame))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Listener]:
        async with self.client:
            self._task = asyncio.create_task(self._collect())
            try:
                yield self
            finally:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    def about(self, message_id: str) -> list[tuple[float, dict[str, Any]]]:
        """The frames about one message: its `message.created`, and the `message.status`
        frames that list one of its copies."""
        return [(at, f) for at, f in self.frames if message_id in _message_ids(f)]

    async def wait_for(self, message_id: str, kind: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(f["type"] == kind for _at, f in self.about(message_id)):
                return True
            await asyncio.sleep(0.05)
        return False


def _message_ids(frame: dict[str, Any]) -> set[str]:
    data = frame.get("data") or {}
    if frame.get("type") == "message.status":
        ids = [copy.get("messageId") for copy in data.get("copies", [])]
    else:
        ids = [data.get("id")]
    return {i for i in ids if isinstance(i, str)}


def bob_copy(receipts: Json) -> Json:
    found = [r for r in receipts.get("recipients", []) if r["userId"] == "bob"]
    return found[0] if found else {"status": "MISSING"}


TITLE = "4. Messenger: a group, the realtime stream, receipts"


async def run(section: Section, stack: Stack) -> None:
    alice_token, bob_token = stack.token("alice"), stack.token("bob")
    async with (
        httpx.AsyncClient(
            base_url=stack.api_url, headers={"Authorization": f"Bearer {alice_token}"}, timeout=30
        ) as alice,
        httpx.AsyncClient(
            base_url=stack.api_url, headers={"Authorization": f"Bearer {bob_token}"}, timeout=30
        ) as bob,
    ):
        group = await call(
            alice,
            "POST",
            "/chat/conversations",
            expect=(201,),
            json={"kind": "group", "title": "Demo launch", "members": ["bob"]},
            headers={"Idempotency-Key": f"demo-group-{uuid.uuid4().hex[:8]}"},
        )
        bob_stream = Listener(
            StreamClient(stack.stream_url, tickets=ticket_source(stack.api_url, bob_token))
        )
        alice_stream = Listener(StreamClient(stack.stream_url, token=alice_token, auto_ack=False))
        async with bob_stream.running(), alice_stream.running():
            section.say(
                f"- alice made group `{group['id']}` with bob (`POST /chat/conversations`); bob "
                f"is on `{stack.stream_url}` with `StreamClient` (a ticket from "
                f"`POST /chat/stream-tickets`, acking what he takes), alice with her bearer token."
            )
            await _exchange(section, alice, bob, group["id"], bob_stream, alice_stream)


async def _exchange(
    section: Section,
    alice: httpx.AsyncClient,
    bob: httpx.AsyncClient,
    conversation_id: str,
    bob_stream: Listener,
    alice_stream: Listener,
) -> None:
    posted = await call(
        alice,
        "POST",
        "/chat/messages",
        expect=(202,),
        json={
            "conversationId": conversation_id,
            "text": "Ship it on Friday?",
            "clientMessageId": f"demo-{uuid.uuid4().hex[:8]}",
        },
    )
    message_id = posted["id"]
    copies = StateLog()
    receipts_url = f"/chat/messages/{message_id}/receipts"
    got = await bob_stream.wait_for(message_id, "message.created", TIMEOUT_S)
    delivered = await poll(
        lambda: call(alice, "GET", receipts_url),
        lambda r: bob_copy(r)["status"] in ("DELIVERED", "READ", "FAILED"),
        TIMEOUT_S,
        interval_s=0.1,
        seen=lambda r: copies.note(bob_copy(r)["status"]),
    )
    marked = await call(bob, "POST", f"/chat/messages/{message_id}/read")
    final = await poll(
        lambda: call(alice, "GET", receipts_url),
        lambda r: bob_copy(r)["status"] in ("READ", "FAILED"),
        TIMEOUT_S,
        interval_s=0.1,
        seen=lambda r: copies.note(bob_copy(r)["status"]),
    )
    await alice_stream.wait_for(message_id, "message.status", 5)
    await asyncio.sleep(0.5)  # the READ status event on its way to alice's socket
    section.say(
        f"- alice posted `{message_id}` (seq {posted['seq']}); bob's stream: "
        + ", ".join(f"`{f['type']}` at +{at:.2f} s" for at, f in bob_stream.about(message_id))
        + f" (acked {bob_stream.client.stats.acked} message)."
    )
    section.say(
        f"- bob's copy, as alice's `GET /chat/messages/{{id}}/receipts` showed it: {copies} "
        f"(DELIVERED by his ack; READ once he called `POST /chat/messages/{{id}}/read`: "
        f"markedRead {marked['markedRead']})."
    )
    statuses = [
        f.get("data", {}).get("status")
        for _at, f in alice_stream.about(message_id)
        if f["type"] == "message.status"
    ]
    section.say(f"- alice's stream: `message.status` {statuses or 'none'}.")
    section.say("Receipts at the end:")
    section.table(
        ["recipient", "status", "sentAt", "deliveredAt", "readAt"],
        [
            [r["userId"], r["status"], r.get("sentAt"), r.get("deliveredAt"), r.get("readAt")]
            for r in final["recipients"]
        ],
    )
    section.say(f"Summary: `{json.dumps(final['summary'])}`")
    bob_at_delivery = bob_copy(delivered)
    section.check("bob's stream got alice's message", got)
    section.check(
        "bob's copy DELIVERED through his ack (before any read, with no fetch)",
        bob_at_delivery["status"] == "DELIVERED"
        and bob_at_delivery.get("readAt") is None
        and bob_stream.client.stats.acked >= 1,
        f"{bob_at_delivery['status']}, acked {bob_stream.client.stats.acked}",
    )
    last = bob_copy(final)
    section.check(
        "bob's copy READ after his read, with its delivery and read times",
        last["status"] == "READ" and bool(last.get("deliveredAt")) and bool(last.get("readAt")),
        last["status"],
    )
    section.check(
        "alice's stream told her DELIVERED then READ",
        "DELIVERED" in statuses
        and "READ" in statuses
        and statuses.index("DELIVERED") < statuses.index("READ"),
        statuses,
    )
