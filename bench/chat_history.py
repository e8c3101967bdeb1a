"""Chat history over one conversation of 1,000,000 messages: the newest page and full-text search
through the real API (`GET /chat/messages`), against the same SQL through asyncpg alone.

The conversation is seeded by COPY (`bench.chat_common.load_messages`): a group of five members
with membership intervals, 12 words per message on average drawn with Zipf's law, so a word's
frequency is known from its rank. The reader, `alice`, left at 30% of the history and re-joined at
40%: the gap is hidden from her (the history rule), and every query filters with it.

Queries (each `limit=50`, newest first):
- `newest`: `GET /chat/messages?conversationId=…&limit=50`;
- `search 1%`: `q=invoice`, a word in ~1% of the messages;
- `search rare`: `q=zeppelin`, a word in ~3 of 100,000 messages (about 30 of a million).

Each query runs back to back on one keep-alive connection (one request at a time: latency, not
throughput) for a window after a warm-up, against the API, then as the page's own SQL (built from
the same `visible_message` condition, compiled by SQLAlchemy's asyncpg dialect and run as a
prepared statement as the API's driver runs it) through one asyncpg connection; rounds alternate
the order. The ratio is relaybox ÷ raw latency. `--explain` prints each query's plan
(EXPLAIN (ANALYZE, BUFFERS), custom and generic); a missed target prints them too.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
from sqlalchemy import func, select

from bench.chat_common import (
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
    utc,
    with_plans,
)
from bench.common import Result, Target, base_parser, bench_database, finish, run_id
from relaybox.common.chat.visibility import visible_message
from relaybox.common.db.models import ChatMessage
from relaybox.common.db.session import asyncpg_dsn

READER = "alice"
PAGE = 50
TARGET_NEWEST_P99_MS = 10.0
TARGET_SEARCH_P99_MS = 50.0
QUERIES: dict[str, str | None] = {"newest": None, "search 1%": "invoice", "search rare": "zeppelin"}


@dataclass(frozen=True)
class Seeded:
    conversation_id: uuid.UUID
    messages: int
    seconds: float
    matches: dict[str, int]  # visible to the reader, per search term
    stages: dict[str, float]  # seconds: COPY + index builds, VACUUM ANALYZE


def _members(n: int) -> tuple[int, int, int, int]:
    """alice left at 30% and re-joined at 40%; dave joined at 50%; erin was kicked at 70%."""
    return int(n * 0.3), int(n * 0.4), int(n * 0.5), int(n * 0.7)


def _sender(n: int) -> Any:
    left, rejoined, dave_joined, erin_kicked = _members(n)

    def sender(seq: int) -> str:
        turn = seq % 5
        if turn == 2 and (seq <= left or seq > rejoined):
            return "alice"
        if turn == 3:
            return "dave" if seq > dave_joined else "carol"
        if turn == 4 and seq <= erin_kicked:
            return "erin"
        return "carol" if turn == 1 else "bob"

    return sender


async def seed(dsn: str, n: int) -> Seeded:
    """The conversation, its membership intervals, `n` messages, and alice's copies of the
    newest 10,000 she may see (what her fetches mark DELIVERED)."""
    started = time.monotonic()
    conversation = uuid.uuid4()
    left, rejoined, dave_joined, erin_kicked = _members(n)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(
            "INSERT INTO chat_conversations (id, tenant_id, kind, title, created_by, last_seq)"
            " VALUES ($1, $2, 'group', 'history', 'bob', $3)",
            conversation,
            TENANT,
            n,
        )
        await conn.executemany(
            "INSERT INTO chat_members (conversation_id, tenant_id, user_id, role, joined_seq,"
            " left_seq, ended_by, read_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [
                (conversation, TENANT, "bob", "owner", 0, None, None, n),
                (conversation, TENANT, "carol", "member", 0, None, None, n - 500),
                (conversation, TENANT, READER, "member", 0, left, "left", left),
                (conversation, TENANT, READER, "member", rejoined, None, None, n - 20),
                (conversation, TENANT, "dave", "member", dave_joined, None, None, dave_joined),
                (conversation, TENANT, "erin", "member", 0, erin_kicked, "kicked", 0),
            ],
        )
        every = timedelta(days=730) / n
        span = Span(conversation, 1, n, _sender(n), utc(730), every)
        loading = time.monotonic()
        await load_messages(dsn, [span])
        loaded = time.monotonic()
        await conn.execute(
            "INSERT INTO chat_recipients (message_id, user_id, conversation_id, seq, status,"
            " attempts, sent_at) SELECT id, $2::text, conversation_id, seq, 'SENT', 1, created_at"
            " FROM chat_messages WHERE conversation_id = $1 AND seq > $3 AND sender_id <> $2",
            conversation,
            READER,
            max(rejoined, n - 10_000),
        )
        # Vacuumed now (visibility map, hint bits), or autovacuum would do it while measuring.
        await conn.execute("VACUUM ANALYZE")
        stages = {"copy + indexes": loaded - loading, "vacuum": time.monotonic() - loaded}
        matches = {}
        for name, q in QUERIES.items():
            if q is not None:
                matches[name] = await conn.fetchval(
                    "SELECT count(*) FROM chat_messages WHERE conversation_id = $1"
                    " AND search @@ websearch_to_tsquery('simple', $2)"
                    " AND (seq <= $3 OR seq > $4)",
                    conversation,
                    q,
                    left,
                    rejoined,
                )
    finally:
        await conn.close()
    return Seeded(conversation, n, time.monotonic() - started, matches, stages)


def page_stmt(conversation_id: uuid.UUID, q: str | None) -> Any:
    """The page statement `relaybox.api.chat.history.page` builds for alice."""
    stmt = select(ChatMessage).where(
        ChatMessage.conversation_id == conversation_id, visible_message(TENANT, READER)
    )
    stmt = stmt.order_by(ChatMessage.seq.desc())
    if q is not None:
        stmt = stmt.where(ChatMessage.search.op("@@")(func.websearch_to_tsquery("simple", q)))
    return stmt.limit(PAGE + 1)


def cases(seeded: Seeded) -> list[Case]:
    found = []
    for name, q in QUERIES.items():
        query: dict[str, str | int] = {"conversationId": str(seeded.conversation_id)}
        query["limit"] = PAGE
        detail = f"limit={PAGE}"
        if q is not None:
            query["q"] = q
            detail = f"q={q} ({seeded.matches[name]:,} visible)"
        sql, args = driver_sql(page_stmt(seeded.conversation_id, q))
        found.append(Case(name, f"/chat/messages?{urlencode(query)}", sql, args, detail))
    return found


def summarize(seeded: Seeded, checked: list[Case], compared: Compared) -> Result:
    rows, metrics = report(checked, compared)
    metrics.update(
        {
            "messages": seeded.messages,
            "seed_s": round(seeded.seconds, 1),
            "seed_stages_s": {k: round(v, 1) for k, v in seeded.stages.items()},
            "rounds": len(compared.api["newest"]),
            "search_1pct_matches": seeded.matches["search 1%"],
            "search_rare_matches": seeded.matches["search rare"],
        }
    )
    metrics["search_p99_ms"] = max(metrics["search_1pct_p99_ms"], metrics["search_rare_p99_ms"])
    invoice = seeded.matches["search 1%"] / seeded.messages
    notes = [
        f"{seeded.messages:,} messages in one conversation, seeded in {seeded.seconds:.1f} s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in seeded.stages.items())
        + "); "
        "alice reads (a member for 0-30% and 40-100% of the history); one request at a time",
        f"alice may see {seeded.matches['search 1%']:,} messages with invoice ({invoice:.2%} "
        f"of all) and {seeded.matches['search rare']:,} with zeppelin",
        "ratio = relaybox latency / raw latency (raw: the page's SQL alone through asyncpg; "
        "the API also authenticates, reads the seat (conversation + membership), marks the "
        "page's copies DELIVERED, reads attachments and serializes over HTTP)",
        *context_notes(),
    ]
    return Result(
        name="chat_history",
        columns=COLUMNS,
        rows=rows,
        metrics=metrics,
        targets=[
            Target("newest_p99_ms", "<", TARGET_NEWEST_P99_MS),
            Target("search_p99_ms", "<", TARGET_SEARCH_P99_MS),
            Target("errors", "<", 1),
        ],
        notes=notes,
    )


def run(*, quick: bool = False, messages: int | None = None, rounds: int | None = None) -> Result:
    return run_with(quick=quick, messages=messages, rounds=rounds, explain_all=False)


def run_with(*, quick: bool, messages: int | None, rounds: int | None, explain_all: bool) -> Result:
    n = messages or (5_000 if quick else 1_000_000)
    pace = Pace.of(quick, rounds)

    async def main(database_url: str) -> tuple[Seeded, list[Case], Compared]:
        async with real_api(database_url) as api:  # boots while the seed is written
            seeded = await seed(asyncpg_dsn(database_url), n)
            checked = cases(seeded)
            found = await compare(
                checked, api=api, database_url=database_url, user=READER, pace=pace
            )
        return seeded, checked, found

    with bench_database(f"history_{run_id()}") as database_url:
        limit = pace.budget_s(len(QUERIES)) + n / 5_000
        seeded, checked, compared = asyncio.run(asyncio.wait_for(main(database_url), limit))
    return with_plans(summarize(seeded, checked, compared), compared, explain_all)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument(
        "--messages", type=int, default=None, help="default 1,000,000 (quick 5,000)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (quick 1)")
    parser.add_argument("--explain", action="store_true", help="print every query's plan")
    args = parser.parse_args(argv)
    result = run_with(
        quick=args.quick, messages=args.messages, rounds=args.rounds, explain_all=args.explain
    )
    return finish(result, check=args.check)


if __name__ == "__main__":
    sys.exit(main())
