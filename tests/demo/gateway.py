"""Scene 2: a Meta (WhatsApp) conversation through signed webhooks to `/webhooks/mock-meta`:
an inbound message delivered twice, two more out of order, an agent's reply sent through the
mock Meta API, and its status events read-before-delivered (and read again)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from relaybox.common.signing import SIGNATURE_HEADER, sign
from tests.demo.http import Json, StateLog, call, ledger, poll, send
from tests.demo.report import Section

HOOK = "/webhooks/mock-meta"
CUSTOMER = "+15550100042"
TIMEOUT_S = 90.0


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Webhooks:
    """Posts events signed as the provider signs them, and keeps each answer for the report."""

    def __init__(self, api: httpx.AsyncClient, secret: str) -> None:
        self._api = api
        self._secret = secret
        self.rows: list[list[Any]] = []

    async def post(self, event: Json, note: str) -> str:
        body = json.dumps(event).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self._secret, body)}
        response = await send(self._api, "POST", HOOK, content=body, headers=headers)
        answer = response.json().get("status", "?") if response.is_success else "?"
        what = event.get("text") or event.get("status")
        self.rows.append(
            [
                len(self.rows) + 1,
                f"`{event['eventId']}`",
                event["type"],
                what,
                event["timestamp"][11:23],
                note,
                f"{response.status_code} {answer}",
            ]
        )
        return str(answer)


def inbound(event_id: str, text: str, at: datetime) -> Json:
    return {
        "eventId": event_id,
        "type": "message",
        "channel": "whatsapp",
        "from": CUSTOMER,
        "text": text,
        "timestamp": stamp(at),
    }


def status(event_id: str, provider_id: str, value: str, at: datetime) -> Json:
    return {
        "eventId": event_id,
        "type": "status",
        "channel": "whatsapp",
        "providerMessageId": provider_id,
        "status": value,
        "timestamp": stamp(at),
    }


TITLE = "2. A Meta conversation: duplicate and out-of-order webhooks"


HEADERS = ["#", "eventId", "type", "text / status", "timestamp", "posted as", "answer"]


async def run(
    section: Section, api: httpx.AsyncClient, mock: httpx.AsyncClient, webhook_secret: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    hooks = Webhooks(api, webhook_secret)
    t0 = datetime.now(UTC) - timedelta(minutes=2)
    first = inbound(f"wamid.{tag}.1", "Hi! Is my order #1042 shipped?", t0)
    second = inbound(f"wamid.{tag}.2", "It was due yesterday.", t0 + timedelta(seconds=20))
    third = inbound(f"wamid.{tag}.3", "Order placed on the 3rd.", t0 + timedelta(seconds=10))
    answers = [
        await hooks.post(first, "first delivery"),
        await hooks.post(first, "the same event again"),
        await hooks.post(second, "the newer message first"),
        await hooks.post(third, "the older one after it"),
    ]
    section.say(
        f"The customer's messages, as signed webhooks (`{SIGNATURE_HEADER}`, the provider's "
        "HMAC) to `POST /webhooks/mock-meta`, in this order:"
    )
    section.table(HEADERS, hooks.rows)
    inbox = await call(api, "GET", "/conversations", params={"channel": "whatsapp"})
    mine = [c for c in inbox["data"] if c["participantId"] == CUSTOMER]
    if not section.check("one conversation for the customer", len(mine) == 1, len(mine)):
        return
    conversation_id = mine[0]["id"]
    before = await call(api, "GET", f"/conversations/{conversation_id}")
    section.say(
        f"- The conversation (`GET /conversations/{{id}}`): unreadCount {before['unreadCount']}, "
        f"preview {before['lastMessagePreview']!r}."
    )
    _inbound_checks(section, answers, before, [first, third, second])
    message = await _reply(section, api, mock)
    provider_id = message.get("providerMessageId")
    if not provider_id:
        return
    now = datetime.now(UTC)
    read = status(f"wamid.{tag}.s2", provider_id, "read", now + timedelta(seconds=2))
    delivered = status(f"wamid.{tag}.s1", provider_id, "delivered", now + timedelta(seconds=1))
    answers = [
        await hooks.post(read, "read first"),
        await hooks.post(delivered, "delivered after it"),
        await hooks.post(read, "read again"),
    ]
    section.say("The reply's status events, out of order and one twice:")
    section.table(HEADERS, hooks.rows[4:])
    final_message = await call(api, "GET", f"/messages/{message['id']}")
    final = await call(api, "GET", f"/conversations/{conversation_id}")
    _report_final(section, final, final_message)
    inbound_texts = [m["text"] for m in final["messages"] if m["direction"] == "inbound"]
    section.check(
        "each inbound message stored once, the duplicate included",
        sorted(inbound_texts) == sorted([first["text"], second["text"], third["text"]]),
        f"{len(inbound_texts)} inbound messages",
    )
    section.check(
        "the reply READ: the late `delivered` did not move it back, the repeat changed nothing",
        final_message["status"] == "READ" and answers[2] == "duplicate",
        f"{final_message['status']}; the status events answered {answers}",
    )


def _inbound_checks(section: Section, answers: list[str], before: Json, order: list[Json]) -> None:
    oldest_first = [m["text"] for m in sorted(before["messages"], key=lambda m: m["sortAt"])]
    section.check(
        "the repeated event answered `duplicate`",
        answers == ["processed", "duplicate", "processed", "processed"],
        answers,
    )
    section.check(
        "the thread in the provider's timestamp order, the newest message as the preview",
        oldest_first == [m["text"] for m in order]
        and before["lastMessagePreview"] == order[-1]["text"],
        f"oldest first {oldest_first}",
    )
    section.check(
        "unread count 3: one per message, the duplicate not counted",
        before["unreadCount"] == 3,
        before["unreadCount"],
    )


async def _reply(section: Section, api: httpx.AsyncClient, mock: httpx.AsyncClient) -> Json:
    """The agent's reply, sent twice with one clientMessageId; polled until the mock accepted it."""
    body = {
        "channel": "whatsapp",
        "to": CUSTOMER,
        "text": "Yes: it left the warehouse this morning.",
        "clientMessageId": f"reply-{uuid.uuid4().hex[:8]}",
    }
    created = await call(api, "POST", "/messages/send", expect=(202,), json=body)
    again = await call(api, "POST", "/messages/send", expect=(200,), json=body)
    states = StateLog()
    started = time.monotonic()
    sent = await poll(
        lambda: call(api, "GET", f"/messages/{created['id']}"),
        lambda m: m["status"] in ("SENT", "FAILED") and bool(m["providerMessageId"]),
        TIMEOUT_S,
        interval_s=0.1,
        seen=lambda m: states.note(m["status"]),
    )
    entry = (await ledger(mock, "meta")).get(created["id"], {})  # keyed by the message id
    section.say(
        f"- Agent's reply `POST /messages/send` → 202 `{created['id']}`; the same "
        f"`clientMessageId` again → 200 "
        f"{'the same message' if again['id'] == created['id'] else 'ANOTHER message'}; "
        f"through the consumer to the mock Meta API: {states} in "
        f"{time.monotonic() - started:.1f} s (provider id `{sent['providerMessageId']}`); the "
        f"mock Meta API's ledger for it: {entry.get('calls', 0)} call(s), "
        f"{len(entry.get('acceptedAt', []))} accepted."
    )
    section.check(
        "the reply sent once for two requests (idempotent on clientMessageId)",
        again["id"] == created["id"] and sent["status"] == "SENT" and entry.get("calls") == 1,
        f"the same id twice: {again['id'] == created['id']}, status {sent['status']}, "
        f"provider calls {entry.get('calls', 0)}",
    )
    return sent


def _report_final(section: Section, final: Json, message: Json) -> None:
    section.say(
        f"The reply (`GET /messages/{{id}}`): **{message['status']}**, sentAt "
        f"{message['sentAt']}, deliveredAt {message['deliveredAt']}, readAt {message['readAt']} "
        "(a read implies the delivery). The conversation at the end, newest first:"
    )
    section.table(
        ["direction", "text", "status", "provider timestamp / accepted"],
        [[m["direction"], m["text"], m["status"], m["sortAt"]] for m in final["messages"]],
    )
