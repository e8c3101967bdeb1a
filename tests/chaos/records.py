"""What the two sides recorded at the end of a chaos run: relaybox's rows (items, final
statuses, inbound messages, conversations, mailing token hashes) and the mock providers' ledger.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
import asyncpg
import httpx

from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings
from tests.chaos.ledger import Acceptance, Finding, InboundTally, Item, Route
from tests.chaos.workload import InboundPlan, Submitted

OUTSTANDING = """
SELECT
  (SELECT count(*) FROM emails) AS emails,
  (SELECT count(*) FROM emails WHERE status NOT IN ('SENT', 'FAILED')) AS emails_open,
  (SELECT count(*) FROM messages WHERE direction = 'outbound'
      AND status NOT IN ('SENT', 'DELIVERED', 'READ', 'FAILED')) AS meta_open,
  (SELECT count(*) FROM mailing_recipients WHERE status = 'PENDING') AS recipients_open,
  (SELECT count(*) FROM mailings WHERE status IN ('PARSING', 'RUNNING')) AS mailings_open,
  (SELECT count(*) FROM messages WHERE direction = 'inbound') AS inbound,
  (SELECT count(*) FROM outbox) AS outbox
"""
ROW_STATE = "SELECT id, status, attempts, last_error FROM {table} {where}"
TOKEN = re.compile(r"\[\[([A-Za-z0-9_-]+)\]\]")
PROVIDERS = {"smtp": "smtp", "emailApi": "email-api", "meta": "meta"}


async def outstanding(dsn: str) -> dict[str, int]:
    """Counts that reach their final values once every item is terminal."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        row = await conn.fetchrow(OUTSTANDING, timeout=10)
    finally:
        await conn.close()
    assert row is not None
    return {key: int(value) for key, value in row.items()}


async def queued(broker: BrokerSettings) -> int:
    """Messages waiting in the run's queues (work, retry tiers, dead letters)."""
    total = 0
    connection = await aio_pika.connect(broker.url, timeout=10)
    async with connection:
        channel = await connection.channel()
        for name in Topology.from_settings(broker).all_queues():
            queue = await channel.declare_queue(name, passive=True)
            total += queue.declaration_result.message_count or 0
    return total


def all_terminal(counts: dict[str, int], expected_emails: int, expected_inbound: int) -> bool:
    return (
        counts["emails"] >= expected_emails
        and counts["inbound"] >= expected_inbound
        and not any(counts[k] for k in ("emails_open", "meta_open", "recipients_open"))
        and counts["mailings_open"] == 0
    )


@dataclass
class Rows:
    """relaybox's side: every outbound item with its status, and the mailing's token hashes."""

    items: list[Item]
    token_hashes: dict[str, str]  # email id -> sha256 of the recipient's token
    inbound_counts: dict[str, int]  # provider event id -> messages stored
    conversations: list[dict[str, Any]]


async def read_rows(dsn: str, submitted: Submitted) -> Rows:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        emails = {
            str(r["id"]): r for r in await conn.fetch(ROW_STATE.format(table="emails", where=""))
        }
        recipients = await conn.fetch(
            "SELECT email_id, token_hash FROM mailing_recipients WHERE email_id IS NOT NULL"
        )
        metas = await conn.fetch(
            ROW_STATE.format(table="messages", where="WHERE direction = 'outbound'")
        )
        inbound = await conn.fetch(
            "SELECT provider_event_id, count(*) AS n FROM messages WHERE direction = 'inbound' "
            "GROUP BY provider_event_id"
        )
        conversations = await conn.fetch(
            "SELECT channel, participant_id, unread_count, last_message_preview, "
            "last_message_at FROM conversations"
        )
    finally:
        await conn.close()
    hashes = {str(r["email_id"]): r["token_hash"] for r in recipients}
    items = [_item("email", i, emails.get(i)) for i in submitted.emails]
    items += [_item("mailing", i, emails.get(i)) for i in hashes]
    chats = {str(r["id"]): r for r in metas}
    items += [_item("meta", i, chats.get(i)) for i in submitted.meta]
    return Rows(
        items=items,
        token_hashes=hashes,
        inbound_counts={r["provider_event_id"]: int(r["n"]) for r in inbound},
        conversations=[dict(r) for r in conversations],
    )


def _item(route: Route, key: str, row: asyncpg.Record | None) -> Item:
    if row is None:
        return Item(route, key, "MISSING")
    return Item(route, key, row["status"], row["attempts"], row["last_error"])


@dataclass
class ProviderSide:
    """The mocks' side: acceptances and calls per item key, and what the mailing bodies held."""

    accepted: dict[str, list[Acceptance]]
    calls: dict[str, int]
    unkeyed_calls: int
    tokens: dict[str, list[tuple[datetime, str]]]  # email id -> tokens delivered, with when

    def all_tokens(self) -> list[str]:
        return [token for delivered in self.tokens.values() for _, token in delivered]


async def read_provider_side(client: httpx.AsyncClient) -> ProviderSide:
    ledger = (await client.get("/ledger")).raise_for_status().json()
    accepted: dict[str, list[Acceptance]] = {}
    calls: dict[str, int] = {}
    unkeyed = 0
    for name, provider in PROVIDERS.items():
        view = ledger[name]
        unkeyed += view["unkeyedCalls"]
        for key, entry in view["entries"].items():
            item = key.split("@", 1)[0] if provider == "smtp" else key
            calls[item] = calls.get(item, 0) + entry["calls"]
            moments = [Acceptance(at, provider) for at in entry["acceptedAt"]]
            accepted.setdefault(item, []).extend(moments)
    return ProviderSide(accepted, calls, unkeyed, await _tokens(client))


async def _tokens(client: httpx.AsyncClient) -> dict[str, list[tuple[datetime, str]]]:
    """The tokens accepted mailing emails carried in their bodies, by email id, in order."""
    found: dict[str, list[tuple[datetime, str]]] = {}

    def add(email_id: str | None, moment: str, body: str | None) -> None:
        match = TOKEN.search(body or "")
        if email_id and match:
            found.setdefault(email_id, []).append((datetime.fromisoformat(moment), match[1]))

    smtp = (await client.get("/smtp/messages")).raise_for_status().json()["data"]
    for message in smtp:
        email_id = (message.get("messageId") or "").strip("<>").split("@", 1)[0]
        add(email_id, message["receivedAt"], message.get("text"))
    api = (await client.get("/email-api/_mock/messages")).raise_for_status().json()["data"]
    for record in api:
        add(record.get("idempotencyKey"), record["acceptedAt"], record["body"])
    return {email_id: sorted(delivered) for email_id, delivered in found.items()}


def token_findings(
    tokens: dict[str, list[tuple[datetime, str]]], hashes: dict[str, str]
) -> list[Finding]:
    """Mailing emails whose last delivered token is not the one relaybox keeps the hash of:
    the recipient's newest email carries a token that will not verify."""
    found = []
    for email_id, expected in hashes.items():
        delivered = tokens.get(email_id, [])
        digests = [hashlib.sha256(token.encode()).hexdigest() for _, token in delivered]
        if digests and digests[-1] != expected:
            earlier = "an earlier one matches" if expected in digests else "none matches"
            detail = f"{len(delivered)} tokens delivered, the last does not match ({earlier})"
            found.append(Finding("mailing", email_id, "token not valid", detail))
    return found


def inbound_tally(plan: InboundPlan, submitted: Submitted, rows: Rows) -> InboundTally:
    """Each distinct inbound message stored once; each conversation's latest message and count."""
    tally = InboundTally(
        events=len(plan.events),
        posts=len(plan.posts),
        planned_duplicates=plan.duplicates,
        out_of_order=plan.out_of_order,
        answered_duplicate=submitted.webhook_answers.get("duplicate", 0),
    )
    for event in plan.events:
        stored = rows.inbound_counts.get(event.event_id, 0)
        tally.stored_once += stored == 1
        tally.missing += stored == 0
        tally.stored_twice += stored > 1
    expected: dict[tuple[str, str], list[Any]] = {}
    for event in plan.events:
        expected.setdefault((event.channel, event.sender), []).append(event)
    tally.conversations = len(expected)
    found = {(c["channel"], c["participant_id"]): c for c in rows.conversations}
    for key, events in expected.items():
        latest = max(events, key=lambda e: e.timestamp)
        row = found.get(key)
        tally.conversations_wrong += row is None or not _conversation_ok(row, latest, len(events))
    return tally


def _conversation_ok(row: dict[str, Any], latest: Any, count: int) -> bool:
    at: datetime | None = row["last_message_at"]
    return (
        row["last_message_preview"] == latest.text
        and at is not None
        and at == latest.timestamp
        and row["unread_count"] == count
    )
