"""A message's copies in PostgreSQL: their insert and status changes, in `chat_recipients`'
storage (migration 0012: `fillfactor = 60`, migration 0013: no foreign key), against the same
table with full pages and against it with the foreign key to `chat_messages` it had.

A group message writes one `chat_recipients` row per recipient and moves each one forward up to
three times in its first seconds (SENT, DELIVERED, READ). None of the columns those updates
change is indexed, so PostgreSQL can update a row without touching the indexes (a HOT update),
but only when the new version fits on the row's page. This benchmark measures what the room
left on each page buys.

One database, migrated to head. Three tables built from `chat_recipients` (`LIKE … INCLUDING
ALL`): `schema`, with `chat_recipients`' own storage parameters and no foreign key, as it is;
`full_pages`, the same with `fillfactor = 100` (PostgreSQL's default, what the table had before
migration 0012): the baseline; and `foreign_key`, `schema` with the key to `chat_messages` (`ON
DELETE CASCADE`) it had before migration 0013. For each message, on one connection, as the
services write them: the message and its copies in one statement (`INSERT … SELECT` from the
members: the chat post), SENT (the consumer's delivery round), DELIVERED (a socket's ack) and
READ (the recipients' reads), each one statement over the message's copies. The tables take
turns, a block of messages each, so that all see the same machine. Measured: the backend's CPU
per message (/proc), the share of HOT updates (`pg_stat_user_tables`), and the table's size with
its indexes.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import dataclass, field

import asyncpg
from tests.support.processes import cpu_seconds

from bench.common import Result, Target, base_parser, bench_database, finish, run_id
from relaybox.common.db.session import asyncpg_dsn

RECIPIENTS = 99  # a 100-member group, as bench.realtime_latency posts to
BLOCK = 50  # messages per turn of one table
TARGET_CPU_RATIO = 0.85  # schema's CPU per message ÷ full pages'
TARGET_KEY_RATIO = 0.85  # schema's insert (message and copies) ÷ the same with the foreign key
# name → fillfactor (None: chat_recipients' own)
TABLES = {"schema": None, "full_pages": 100, "foreign_key": None}
STEPS = ("insert", "sent", "delivered", "read")

INSERT = """
WITH message AS (
    INSERT INTO chat_messages (id, conversation_id, tenant_id, seq, sender_id, text)
    VALUES ($1, $2, 'bench', $3, 'sender', 'hello') RETURNING id, seq
)
INSERT INTO {table} (message_id, user_id, conversation_id, seq)
SELECT message.id, u, $2, message.seq FROM message, unnest($4::varchar[]) AS u
"""
CONVERSATION = (
    "INSERT INTO chat_conversations (id, tenant_id, kind, title, created_by) "
    "VALUES ($1, 'bench', 'group', $2, 'sender')"
)
MOVE = """
UPDATE {table} SET status = $2, {stamp} = coalesce({stamp}, now())
WHERE message_id = $1 AND status = ANY($3::varchar[])
"""
MOVES = (  # step, the status it moves to, its timestamp column, the statuses it moves from
    ("sent", "SENT", "sent_at", ["PENDING"]),
    ("delivered", "DELIVERED", "delivered_at", ["PENDING", "SENT", "FAILED"]),
    ("read", "READ", "read_at", ["PENDING", "SENT", "DELIVERED", "FAILED"]),
)


@dataclass
class Tally:
    messages: int = 0
    cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STEPS, 0.0))

    def ms_per_message(self, step: str | None = None) -> float:
        used = self.cpu_s[step] if step else sum(self.cpu_s.values())
        return used / self.messages * 1000


async def _create(conn: asyncpg.Connection, table: str, fillfactor: int | None) -> None:
    await conn.execute(f"CREATE TABLE {table} (LIKE chat_recipients INCLUDING ALL)")
    options = await conn.fetchval(
        "SELECT reloptions FROM pg_class WHERE oid = 'chat_recipients'::regclass"
    )
    wanted = [f"fillfactor={fillfactor}"] if fillfactor is not None else list(options or [])
    if wanted:
        await conn.execute(f"ALTER TABLE {table} SET ({', '.join(wanted)})")
    if table == "foreign_key":
        await conn.execute(
            f"ALTER TABLE {table} ADD FOREIGN KEY (message_id) REFERENCES chat_messages (id) "
            "ON DELETE CASCADE"
        )


async def _block(
    conn: asyncpg.Connection, table: str, tally: Tally, first_seq: int, count: int, pid: int
) -> None:
    users = [f"member-{i:03d}" for i in range(RECIPIENTS)]
    conversation = uuid.uuid4()
    await conn.execute(CONVERSATION, conversation, table)
    insert = INSERT.format(table=table)
    moves = [(step, MOVE.format(table=table, stamp=col), to, src) for step, to, col, src in MOVES]
    for seq in range(first_seq, first_seq + count):
        message = uuid.uuid4()
        before = cpu_seconds(pid) or 0.0
        await conn.execute(insert, message, conversation, seq, users)
        after = cpu_seconds(pid) or 0.0
        tally.cpu_s["insert"] += after - before
        for step, statement, status, sources in moves:
            before = after
            await conn.execute(statement, message, status, sources)
            after = cpu_seconds(pid) or 0.0
            tally.cpu_s[step] += after - before
        tally.messages += 1


async def measure(url: str, messages: int) -> tuple[dict[str, Tally], dict[str, dict[str, float]]]:
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    try:
        for table, fillfactor in TABLES.items():
            await _create(conn, table, fillfactor)
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        tallies = {table: Tally() for table in TABLES}
        for first in range(0, messages, BLOCK):
            for table in TABLES:
                await _block(conn, table, tallies[table], first, min(BLOCK, messages - first), pid)
        await conn.execute("SELECT pg_stat_force_next_flush()")
        stats = {}
        for table in TABLES:
            row = await conn.fetchrow(
                "SELECT coalesce(n_tup_hot_upd::float8 / nullif(n_tup_upd, 0), 0) AS hot_share,"
                " pg_total_relation_size(relid) AS bytes"
                " FROM pg_stat_user_tables WHERE relname = $1",
                table,
            )
            stats[table] = dict(row)
        return tallies, stats
    finally:
        await conn.close()


def run(*, quick: bool = False, messages: int | None = None) -> Result:
    count = messages or (200 if quick else 2000)
    with bench_database(f"copies_{run_id()}") as url:
        tallies, stats = asyncio.run(measure(url, count))
    base, ours, keyed = tallies["full_pages"], tallies["schema"], tallies["foreign_key"]
    ratio = ours.ms_per_message() / base.ms_per_message() if base.ms_per_message() else 0.0
    keyed_insert = keyed.ms_per_message("insert")
    key_ratio = ours.ms_per_message("insert") / keyed_insert if keyed_insert else 0.0
    rows = []
    for table in ("full_pages", "foreign_key", "schema"):
        tally, stat = tallies[table], stats[table]
        rows.append(
            [
                table,
                *(round(tally.ms_per_message(step), 3) for step in STEPS),
                round(tally.ms_per_message(), 3),
                f"{stat['hot_share']:.0%}",
                round(stat["bytes"] / 1024 / 1024, 1),
            ]
        )
    size_ratio = stats["schema"]["bytes"] / stats["full_pages"]["bytes"]
    return Result(
        name="chat_copies",
        columns=["table", *(f"{s} ms" for s in STEPS), "total ms", "HOT updates", "MB"],
        rows=rows,
        metrics={
            "messages": count,
            "recipients": RECIPIENTS,
            "cpu_ms_per_message": round(ours.ms_per_message(), 3),
            "baseline_cpu_ms_per_message": round(base.ms_per_message(), 3),
            "cpu_ratio": round(ratio, 3),
            "hot_share": round(stats["schema"]["hot_share"], 3),
            "size_ratio": round(size_ratio, 3),
            "insert_ms_per_message": round(ours.ms_per_message("insert"), 3),
            "keyed_insert_ms_per_message": round(keyed_insert, 3),
            "key_ratio": round(key_ratio, 3),
        },
        targets=[
            Target("cpu_ratio", "<", TARGET_CPU_RATIO),
            Target("key_ratio", "<", TARGET_KEY_RATIO),
        ],
        notes=[
            f"{count} messages of {RECIPIENTS} copies per table, the tables alternating every "
            f"{BLOCK} messages on one connection; PostgreSQL backend CPU per message "
            "(the message and its copies, then SENT, DELIVERED and READ, one statement each); "
            "cpu_ratio = schema ÷ full_pages (fillfactor 100); key_ratio = schema's insert ÷ "
            "foreign_key's (the copies' key to chat_messages, dropped by migration 0013)",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--messages", type=int, default=None, help="per table (default 2000)")
    args = parser.parse_args(argv)
    return finish(run(quick=args.quick, messages=args.messages), check=args.check)


if __name__ == "__main__":
    sys.exit(main())
