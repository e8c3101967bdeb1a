"""A resume's replay page in PostgreSQL, for a user with a long history against one with none.

A client that reconnects sends its cursor; the replica reads, page by page, the events the
cursor does not cover (`relaybox.realtime.store.REPLAY`: the user's `chat_event_readers` rows
from the cursor's point on, and the rows of the transactions the cursor lists as pending). What
the user received before the point must cost nothing: it is up to a week of events (the
retention), read on every page of every resume otherwise.

One database, migrated to head. Two users of one organisation: `veteran`, with `--history`
events (default 50,000; quick 5,000) before the cursor's point, and `newcomer`, with none; then
the same three events for each after the point. Each replay is the replica's own call
(`Store.replay_page`, on an asyncpg pool with the replica's settings), from the same point, with no
transaction pending (the usual case); the two users take turns, a block of calls each, on one
connection. Measured: that backend's CPU per replay (/proc) and the wall time per call.
Baseline: `newcomer`, the same page without the history; target: the history costs nothing
(`ratio` = veteran ÷ newcomer < 2).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

import asyncpg
from tests.support.processes import cpu_seconds

from bench.common import Result, Target, base_parser, bench_database, finish, run_id
from relaybox.common.db.session import asyncpg_dsn, create_engine, dispose
from relaybox.common.settings import DatabaseSettings
from relaybox.realtime import store as realtime_store

TENANT = "bench"
USERS = ("newcomer", "veteran")  # the baseline first
AFTER = 3  # events after the cursor's point, for each user
BLOCK = 50  # calls per turn of one user
TARGET_RATIO = 2.0
PAGE = 500  # the replica's default page (RELAYBOX_REALTIME__REPLAY_PAGE)

READ_EVENTS = """
WITH e AS (
    INSERT INTO chat_events (tenant_id, kind, audience, payload)
    SELECT $1, 'read', ARRAY[$2::text], jsonb_build_object('n', g)
    FROM generate_series(1, $3::int) g
    RETURNING id, xid
)
INSERT INTO chat_event_readers (tenant_id, user_id, xid, event_id)
SELECT $1, $2, xid, id FROM e
"""
"""`$3` `read` events for user `$2`, each with its readers row, in one transaction."""
POINT = "SELECT (pg_snapshot_xmax(pg_current_snapshot())::text)::bigint"


@dataclass
class Tally:
    calls: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def per_call_ms(self, seconds: float) -> float:
        return seconds / self.calls * 1000 if self.calls else 0.0


async def _seed(conn: asyncpg.Connection, history: int) -> int:
    """`history` events of the veteran's before the point (1,000 per transaction, as they come
    over a week), then AFTER events each; returns the point's xid."""
    for start in range(0, history, 1000):
        await conn.execute(READ_EVENTS, TENANT, "veteran", min(1000, history - start))
    point: int = await conn.fetchval(POINT)
    for _ in range(AFTER):
        for user in USERS:
            await conn.execute(READ_EVENTS, TENANT, user, 1)
    await conn.execute("VACUUM ANALYZE chat_events, chat_event_readers")
    return point


async def measure(url: str, history: int, calls: int) -> dict[str, Tally]:
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    try:
        point = await _seed(conn, history)
    finally:
        await conn.close()
    # the replica's pool settings (an older tree has none: PostgreSQL's default)
    settings = getattr(realtime_store, "PLAN_SETTINGS", {})
    pool = await asyncpg.create_pool(
        asyncpg_dsn(url), min_size=1, max_size=1, server_settings=settings
    )
    engine = create_engine(DatabaseSettings(url=url, pool_size=1, max_overflow=0))  # acks only
    try:
        store = realtime_store.Store(engine, pool)
        pid = await pool.fetchval("SELECT pg_backend_pid()")
        tallies = {user: Tally() for user in USERS}
        for _ in range(0, calls, BLOCK):
            for user in USERS:
                tally = tallies[user]
                for _ in range(BLOCK):
                    cpu, wall = cpu_seconds(pid) or 0.0, time.perf_counter()
                    page = await store.replay_page(
                        tenant=TENANT,
                        user=user,
                        start=(point, 0),
                        pending=[],
                        after=(0, 0),
                        skip=[],
                        page=PAGE,
                    )
                    tally.wall_s += time.perf_counter() - wall
                    tally.cpu_s += (cpu_seconds(pid) or 0.0) - cpu
                    tally.calls += 1
                    if len(page.rows) != AFTER:
                        raise AssertionError(f"{user}: {len(page.rows)} events, not {AFTER}")
        return tallies
    finally:
        await pool.close()
        await dispose(engine)


def run(*, quick: bool = False, history: int | None = None, calls: int | None = None) -> Result:
    events = history or (5_000 if quick else 50_000)
    count = calls or (400 if quick else 1000)  # quick: enough 10 ms clock ticks
    with bench_database(f"replay_{run_id()}") as url:
        tallies = asyncio.run(measure(url, events, count))
    base, ours = tallies["newcomer"], tallies["veteran"]
    base_cpu, our_cpu = base.per_call_ms(base.cpu_s), ours.per_call_ms(ours.cpu_s)
    return Result(
        name="realtime_replay",
        columns=["user", "history", "calls", "CPU ms per replay", "wall ms per replay"],
        rows=[
            [
                user,
                events if user == "veteran" else 0,
                tally.calls,
                round(tally.per_call_ms(tally.cpu_s), 3),
                round(tally.per_call_ms(tally.wall_s), 3),
            ]
            for user, tally in tallies.items()
        ],
        metrics={
            "history": events,
            "calls": count,
            "cpu_ms_per_replay": round(our_cpu, 3),
            "baseline_cpu_ms_per_replay": round(base_cpu, 3),
            "ratio": round(our_cpu / base_cpu, 2) if base_cpu else 0.0,
            "wall_ratio": round(ours.wall_s / base.wall_s, 2) if base.wall_s else 0.0,
        },
        targets=[Target("ratio", "<", TARGET_RATIO)],
        notes=[
            f"one page ({AFTER} events after the cursor's point, none pending) per call, "
            f"{count} calls per user in blocks of {BLOCK}; "
            "PostgreSQL backend CPU per call; ratio = veteran (history before the point) ÷ "
            "newcomer (none)",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--history", type=int, default=None, help="default 50000 (quick 5000)")
    parser.add_argument("--calls", type=int, default=None, help="per user (default 1000)")
    args = parser.parse_args(argv)
    return finish(run(quick=args.quick, history=args.history, calls=args.calls), check=args.check)


if __name__ == "__main__":
    sys.exit(main())
