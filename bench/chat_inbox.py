"""A user's inbox over 200 conversations: `GET /chat/conversations?limit=200` (one page: every
conversation with its unread count and last message) through the real API, against the same
SQL through asyncpg alone.

The seed (`seed`): `alice` is a current member of 200 conversations of her organisation — 150
groups of 3-8 members (every tenth one she left and re-joined: two membership intervals), 40
direct conversations, 10 channels — with 10 to 3,000 messages each (Zipf-like, ~100,000 in
all), a third of them with 1-40 messages she has not read; she also left 10 groups for good,
and 1,000 groups she never joined hold 20 messages each. Activity times are spread over 30 days.
Before measuring, one answer is checked: 200 conversations, newest activity first, the unread
counts and last messages the seed implies.

Cases: `inbox 200` (`limit=200`, the whole list in one page: the target) and `inbox 50` (the
default page size). Each runs back to back on one keep-alive connection (one request at a time)
after a warm-up, then as its SQL (the statement `ConversationController.mine` builds, compiled
by SQLAlchemy's asyncpg dialect, run as a prepared statement) through one asyncpg connection;
rounds alternate the order. The ratio is relaybox ÷ raw latency.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
from sqlalchemy import select

from bench.chat_common import (
    CHAT_SCOPES,
    COLUMNS,
    TENANT,
    Case,
    Compared,
    Pace,
    Span,
    compare,
    context_notes,
    driver_sql,
    load_messages,
    real_api,
    report,
    token,
    utc,
    with_plans,
)
from bench.common import BenchError, Result, Target, base_parser, bench_database, finish, run_id
from bench.loadgen import RawConnection
from relaybox.api.auth import Client
from relaybox.api.chat.membership import direct_key
from relaybox.api.chat.views import conversations_query
from relaybox.common.db.models import ChatConversation, ChatMember
from relaybox.common.db.session import asyncpg_dsn

READER = "alice"
TARGET_P99_MS = 20.0
PAGES = {"inbox 200": 200, "inbox 50": 50}
MEMBER_COLUMNS = [
    "conversation_id",
    "tenant_id",
    "user_id",
    "role",
    "joined_seq",
    "left_seq",
    "ended_by",
    "read_seq",
]


@dataclass
class Conversation:
    id: uuid.UUID
    kind: str
    title: str | None
    members: list[str]
    messages: int
    alice: list[tuple[int, int | None]] = field(default_factory=list)  # her intervals
    read_seq: int = 0
    ends_days_ago: float = 0.0
    every: timedelta = timedelta(minutes=5)

    @property
    def listed(self) -> bool:
        return bool(self.alice) and self.alice[-1][1] is None

    @property
    def unread(self) -> int:
        return self.messages - self.read_seq if self.listed else 0

    def sender(self, seq: int) -> str:
        """Alice posts now and then inside her interval, never after her watermark (a post moves
        it); the others take turns."""
        others = [m for m in self.members if m != READER]
        mine = any(lo < seq <= (hi if hi is not None else seq) for lo, hi in self.alice)
        if self.alice and seq % 6 == 0 and mine and seq <= self.read_seq:
            return READER
        return others[seq % len(others)]


def plan(conversations: int, others: int, seed: int = 5) -> list[Conversation]:
    """Alice's `conversations`, 10 she left, and `others` she was never in."""
    rng = random.Random(seed)
    users = [f"u{i:04d}" for i in range(1, 2001)]
    found: list[Conversation] = []
    for i in range(conversations):
        kind = "channel" if i % 20 == 0 else "direct" if i % 5 == 1 else "group"
        size = {"channel": 11, "direct": 2}.get(kind, rng.randint(3, 8))
        members = [READER, *rng.sample(users, size - 1)]
        n = int(10 * 300 ** rng.random())
        title = None if kind == "direct" else f"{kind} {i}"
        c = Conversation(uuid.uuid4(), kind, title, members, n)
        c.alice = [(0, n // 3), (n // 2, None)] if kind == "group" and i % 10 == 2 else [(0, None)]
        c.read_seq = n - min(rng.randint(1, 40), n - c.alice[-1][0]) if i % 3 == 0 else n
        c.ends_days_ago = rng.uniform(0, 30)
        c.every = timedelta(minutes=rng.uniform(1, 60))
        found.append(c)
    for i in range(10):
        members = [READER, *rng.sample(users, 4)]
        c = Conversation(uuid.uuid4(), "group", f"left {i}", members, 50)
        c.alice, c.read_seq, c.ends_days_ago = [(0, 25)], 25, rng.uniform(0, 30)
        found.append(c)
    for i in range(others):
        c = Conversation(uuid.uuid4(), "group", f"others {i}", rng.sample(users, 5), 20)
        c.ends_days_ago = rng.uniform(0, 30)
        found.append(c)
    return found


def _member_rows(c: Conversation) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for lo, hi in c.alice:
        ended = None if hi is None else "left"
        read = c.read_seq if hi is None else hi
        rows.append((c.id, TENANT, READER, "member", lo, hi, ended, read))
    for j, user in enumerate(m for m in c.members if m != READER):
        role = "owner" if j == 0 and c.kind == "group" else "member"
        rows.append((c.id, TENANT, user, role, 0, None, None, c.messages))
    return rows


@dataclass(frozen=True)
class Seeded:
    conversations: list[Conversation]
    messages: int
    seconds: float

    @property
    def listed(self) -> list[Conversation]:
        return [c for c in self.conversations if c.listed]


async def seed(dsn: str, conversations: list[Conversation]) -> Seeded:
    started = time.monotonic()
    spans = []
    rows = []
    for c in conversations:
        end = utc(c.ends_days_ago)
        start = end - (c.messages - 1) * c.every
        spans.append(Span(c.id, 1, c.messages, c.sender, start, c.every))
        key = direct_key(*c.members) if c.kind == "direct" else None
        rows.append((c.id, TENANT, c.kind, c.title, key, c.members[0], c.messages, end, start))
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.copy_records_to_table(
            "chat_conversations",
            records=rows,
            columns=[
                "id",
                "tenant_id",
                "kind",
                "title",
                "direct_key",
                "created_by",
                "last_seq",
                "last_activity_at",
                "created_at",
            ],
        )
        await conn.copy_records_to_table(
            "chat_members",
            records=[row for c in conversations for row in _member_rows(c)],
            columns=MEMBER_COLUMNS,
        )
        messages = await load_messages(dsn, spans, seed=23)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return Seeded(conversations, messages, time.monotonic() - started)


def page_stmt(limit: int) -> Any:
    """The statement `ConversationController.mine` builds for alice's first page."""
    client = Client(id=READER, scopes=frozenset(CHAT_SCOPES), tenant=TENANT)
    stmt = conversations_query(client.tenant, client.id).where(
        ChatConversation.id.in_(
            select(ChatMember.conversation_id).where(
                ChatMember.tenant_id == TENANT,
                ChatMember.user_id == READER,
                ChatMember.left_seq.is_(None),
            )
        )
    )
    stmt = stmt.order_by(ChatConversation.last_activity_at.desc(), ChatConversation.id.desc())
    return stmt.limit(limit + 1)


def cases() -> list[Case]:
    found = []
    for name, limit in PAGES.items():
        sql, args = driver_sql(page_stmt(limit))
        path = f"/chat/conversations?limit={limit}"
        found.append(Case(name, path, sql, args, f"limit={limit}"))
    return found


async def check(url: str, seeded: Seeded) -> None:
    """The API's answer is the inbox the seed implies (else the figures would not count)."""
    conn = RawConnection(url, token(READER))
    try:
        status, body = await conn.get("/chat/conversations?limit=200")
    finally:
        await conn.close()
    if status != 200:
        raise BenchError(f"GET /chat/conversations answered {status}: {body[:300]!r}")
    data = json.loads(body)["data"]
    expected = sorted(seeded.listed, key=lambda c: c.ends_days_ago)
    got = [(d["id"], d["unreadCount"], (d["lastMessage"] or {}).get("seq")) for d in data]
    want = [(str(c.id), c.unread, c.messages) for c in expected]
    if got != want:
        wrong = [(g, w) for g, w in zip(got, want, strict=False) if g != w][:3]
        raise BenchError(
            f"the inbox is not the seeded one ({len(got)} rows, {len(want)} expected; "
            f"first differences (got, expected): {wrong})"
        )


def summarize(seeded: Seeded, checked: list[Case], compared: Compared) -> Result:
    rows, metrics = report(checked, compared)
    listed = seeded.listed
    metrics.update(
        {
            "conversations": len(listed),
            "unread_conversations": sum(1 for c in listed if c.unread),
            "messages": seeded.messages,
            "seed_s": round(seeded.seconds, 1),
            "rounds": len(compared.api["inbox 200"]),
        }
    )
    notes = [
        f"alice: {len(listed)} conversations ({sum(1 for c in listed if c.unread)} with unread "
        f"messages, {sum(c.unread for c in listed)} unread in all), "
        f"{len(seeded.conversations) - len(listed)} more in the organisation she is not in; "
        f"{seeded.messages:,} messages; seeded in {seeded.seconds:.1f} s; one request at a time",
        "ratio = relaybox latency / raw latency (raw: the list's SQL alone through asyncpg; the "
        "API also authenticates, reads the last messages' attachments and serializes over HTTP)",
        *context_notes(),
    ]
    return Result(
        name="chat_inbox",
        columns=COLUMNS,
        rows=rows,
        metrics=metrics,
        targets=[Target("inbox_200_p99_ms", "<", TARGET_P99_MS), Target("errors", "<", 1)],
        notes=notes,
    )


def run(*, quick: bool = False, rounds: int | None = None, explain: bool = False) -> Result:
    conversations = plan(*((20, 100) if quick else (200, 1_000)))
    pace = Pace.of(quick, rounds)
    checked = cases()

    async def main(database_url: str) -> tuple[Seeded, Compared]:
        async with real_api(database_url) as api:  # boots while the seed is written
            seeded = await seed(asyncpg_dsn(database_url), conversations)

            async def answer_is_seeded(url: str) -> None:
                await check(url, seeded)

            found = await compare(
                checked,
                api=api,
                database_url=database_url,
                user=READER,
                pace=pace,
                check=answer_is_seeded,
            )
        return seeded, found

    with bench_database(f"inbox_{run_id()}") as database_url:
        limit = pace.budget_s(len(PAGES))
        seeded, compared = asyncio.run(asyncio.wait_for(main(database_url), limit))
    return with_plans(summarize(seeded, checked, compared), compared, explain)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (quick 1)")
    parser.add_argument("--explain", action="store_true", help="print every query's plan")
    args = parser.parse_args(argv)
    return finish(run(quick=args.quick, rounds=args.rounds, explain=args.explain), check=args.check)


if __name__ == "__main__":
    sys.exit(main())
