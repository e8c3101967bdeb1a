"""Fan-out: one message to a 1,000-member group, from `POST /chat/messages` to all 999 recipient
copies SENT, through the whole pipeline, against the same 999 rows written by one statement.

Every service runs from its real entrypoint in its own process: the API, the publisher, the
consumer (`chat.deliver`: `RELAYBOX_CHAT__FANOUT_BATCH` recipients per message, each device
pushed through the push provider on the global rate limiter, raised here to 100,000/s: the
default, 500/s, alone makes 999 pushes take 2 s) and mock-meta, whose FCM-like push gateway
answers every push at once (no rate limit, latency, failure).

By default the gateway accepts every push and sends no delivery receipt (its `loss` is 1): the
target is about SENT, and the receipts' webhooks would compete for the same two cores. With
`--receipts` it posts each receipt (signed) to the API's `/webhooks/push` after a log-normal
delay (median 500 ms, sigma 1), and a round also waits for every copy DELIVERED (the mock
posts due receipts in batches of up to 100: one POST per receipt stalled it on this machine).

The seed: a group of 1,000 members (the sender and 999 recipients), each with one device, written
directly. A round: `POST /chat/messages` (a fresh `Idempotency-Key`), then the copies are counted
every 10 ms until all 999 are SENT or beyond. The baseline, in a second group with the same
members: one transaction that inserts the message and `INSERT … SELECT`s its 999 copies as SENT
from the membership — what the pipeline's outcome amounts to, written at once.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from bench.chat_common import TENANT, api_env, token
from bench.common import (
    AMQP_URL,
    WEBHOOK_SECRET,
    BenchError,
    CpuMeter,
    Result,
    Service,
    Target,
    base_parser,
    bench_database,
    broker_settings,
    delete_topology,
    finish,
    free_ports,
    median,
    run_id,
)
from bench.loadgen import RawConnection
from relaybox.common.db.session import asyncpg_dsn

SENDER = "sender"
TARGET_S = 1.0
POLL_S = 0.01
ROUND_TIMEOUT_S = 60.0  # for every copy SENT
RECEIPTS_TIMEOUT_S = 30.0  # then (--receipts) for every copy DELIVERED
NO_RECEIPTS = {"loss": 1.0}  # accepted, never delivered: no receipt webhooks
RECEIPTS = {"loss": 0.0, "receiptLatency": {"kind": "lognormal", "medianMs": 500, "sigma": 1.0}}
PUSH_KEY = "bench-push-server-key"
COPIES = """
SELECT count(*) FILTER (WHERE status IN ('SENT', 'DELIVERED', 'READ')),
       count(*) FILTER (WHERE status IN ('DELIVERED', 'READ')),
       count(*) FILTER (WHERE status = 'FAILED')
FROM chat_recipients WHERE message_id = $1
"""
BASELINE_MESSAGE = """
INSERT INTO chat_messages (id, conversation_id, tenant_id, seq, sender_id, text)
VALUES ($1, $2, $3, $4, $5, $6)
"""
BASELINE_COPIES = """
INSERT INTO chat_recipients (message_id, user_id, conversation_id, seq, status, sent_at)
SELECT $1, user_id, conversation_id, $2, 'SENT', now() FROM chat_members
WHERE conversation_id = $3 AND left_seq IS NULL AND user_id <> $4
"""


@dataclass(frozen=True)
class Group:
    conversation_id: uuid.UUID
    baseline_id: uuid.UUID
    recipients: int


async def seed(dsn: str, members: int) -> Group:
    """Two groups of the same `members` (one posted to, one for the baseline), one device each."""
    users = [SENDER, *(f"u{i:04d}" for i in range(1, members))]
    group, baseline = uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.executemany(
            "INSERT INTO chat_conversations (id, tenant_id, kind, title, created_by)"
            " VALUES ($1, $2, 'group', $3, $4)",
            [(group, TENANT, "fan-out", SENDER), (baseline, TENANT, "baseline", SENDER)],
        )
        await conn.copy_records_to_table(
            "chat_members",
            records=[
                (c, TENANT, user, "owner" if user == SENDER else "member", 0, 0)
                for c in (group, baseline)
                for user in users
            ],
            columns=["conversation_id", "tenant_id", "user_id", "role", "joined_seq", "read_seq"],
        )
        await conn.copy_records_to_table(
            "chat_devices",
            records=[(uuid.uuid4(), TENANT, user, "android", f"bench-{user}") for user in users],
            columns=["id", "tenant_id", "user_id", "platform", "push_token"],
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return Group(group, baseline, members - 1)


# -- the services -----------------------------------------------------------------------------


@dataclass
class Pipeline:
    services: list[Service]
    api_url: str
    mock_url: str

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)


def _worker(name: str, module: str, env: dict[str, str], port: int) -> Service:
    """A worker from its entrypoint, its /ready server on `port`."""
    prefix = f"RELAYBOX_{name.upper()}__"
    env = {**env, f"{prefix}HOST": "127.0.0.1", f"{prefix}PORT": str(port)}
    return Service(name, ["-m", module], env, ready_url=f"http://127.0.0.1:{port}/ready")


def pipeline(database_url: str, tag: str) -> Pipeline:
    """The API, publisher, consumer and mock-meta wired together (not started)."""
    broker = {
        "RELAYBOX_DATABASE__URL": database_url,
        "RELAYBOX_BROKER__URL": AMQP_URL,
        "RELAYBOX_BROKER__TOPOLOGY_PREFIX": broker_settings(tag).topology_prefix,
        "RELAYBOX_DEV_MODE": "false",
    }
    api_port, mock_port, publisher_port, consumer_port = free_ports(4)  # distinct
    api_url, mock_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{mock_port}"
    api = Service(
        "api",
        ["-m", "relaybox.api", "serve"],
        {
            **api_env(database_url),
            **broker,
            "RELAYBOX_DATABASE__POOL_SIZE": "10",  # 999 receipts arrive at once
            "RELAYBOX_API__HOST": "127.0.0.1",
            "RELAYBOX_API__PORT": str(api_port),
        },
        ready_url=f"{api_url}/ready",
    )
    publisher = _worker("publisher", "relaybox.publisher", broker, publisher_port)
    consumer = _worker(
        "consumer",
        "relaybox.consumer",
        {
            **broker,
            "RELAYBOX_PUSH__URL": f"{mock_url}/push/v1/messages:send",
            "RELAYBOX_PUSH__SERVER_KEY": PUSH_KEY,
            "RELAYBOX_PUSH__RATE_PER_SECOND": "100000",
        },
        consumer_port,
    )
    mock = Service(
        "mock-meta",
        ["-m", "relaybox.mock_meta"],
        {
            "RELAYBOX_DEV_MODE": "false",
            "RELAYBOX_MOCK_META__HOST": "127.0.0.1",
            "RELAYBOX_MOCK_META__PORT": str(mock_port),
            "RELAYBOX_SMTP_SINK__PORT": "0",
            "RELAYBOX_PUSH__SERVER_KEY": PUSH_KEY,
            "RELAYBOX_PUSH__RECEIPT_URL": f"{api_url}/webhooks/push",
            "RELAYBOX_PUSH__WEBHOOK_SECRET": WEBHOOK_SECRET,
            "RELAYBOX_PUSH__RATE_LIMIT_PER_SECOND": "0",
            "RELAYBOX_PUSH__SEED": "1",
            "RELAYBOX_PUSH__MAX_MESSAGES": "100000",
        },
        ready_url=f"{mock_url}/health",
    )
    return Pipeline([api, publisher, consumer, mock], api_url, mock_url)


# -- rounds -----------------------------------------------------------------------------------


@dataclass
class Round:
    """Seconds from the POST's start: the 202, the first copy SENT, all SENT, all DELIVERED."""

    accepted: float
    first_sent: float | None = None
    all_sent: float | None = None
    all_delivered: float | None = None
    failed: int = 0


async def post_round(
    conn: RawConnection, db: asyncpg.Connection, group: Group, *, receipts: bool
) -> Round:
    body = json.dumps({"conversationId": str(group.conversation_id), "text": "fan-out"})
    started = time.monotonic()
    status, answer = await conn.post("/chat/messages", body.encode(), uuid.uuid4().hex)
    if status != 202:
        raise BenchError(f"POST /chat/messages answered {status}: {answer[:300]!r}")
    found = Round(accepted=time.monotonic() - started)
    message_id = uuid.UUID(json.loads(answer)["id"])
    deadline = started + ROUND_TIMEOUT_S
    sent = failed = 0
    while (now := time.monotonic()) < deadline:
        sent, delivered, failed = await db.fetchrow(COPIES, message_id)
        at = time.monotonic() - started
        if sent and found.first_sent is None:
            found.first_sent = at
        if sent + failed >= group.recipients and found.all_sent is None:
            found.all_sent, found.failed = at, failed
            if not receipts:
                break
            deadline = now + RECEIPTS_TIMEOUT_S
        if delivered + failed >= group.recipients:
            found.all_delivered = at
            break
        await asyncio.sleep(POLL_S)
    if found.all_sent is None:
        raise BenchError(
            f"after {ROUND_TIMEOUT_S:g} s, {sent} of {group.recipients} copies SENT, "
            f"{failed} FAILED"
        )
    return found  # all_delivered None: receipts still owed after RECEIPTS_TIMEOUT_S


async def baseline_round(db: asyncpg.Connection, group: Group, seq: int) -> float:
    """One transaction: the message and its copies SENT (INSERT … SELECT); seconds taken."""
    started = time.monotonic()
    message_id = uuid.uuid4()
    async with db.transaction():
        args = (message_id, group.baseline_id, TENANT, seq, SENDER, "fan-out")
        await db.execute(BASELINE_MESSAGE, *args)
        await db.execute(BASELINE_COPIES, message_id, seq, group.baseline_id, SENDER)
    return time.monotonic() - started


@dataclass
class Outcome:
    group: Group
    rounds: list[Round] = field(default_factory=list)
    baseline_s: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    mock_stats: dict[str, Any] = field(default_factory=dict)
    receipts: bool = False


async def measure(
    database_url: str, tag: str, members: int, rounds: int, *, receipts: bool
) -> Outcome:
    dsn = asyncpg_dsn(database_url)
    found = Pipeline([], "", "")
    try:
        found = pipeline(database_url, tag)
        for service in found.services:
            service.start()
        outcome = Outcome(await seed(dsn, members))  # while the services boot
        for service in found.services:
            await service.wait_ready(60)
        async with httpx.AsyncClient(timeout=5.0) as client:
            config = RECEIPTS if receipts else NO_RECEIPTS
            (
                await client.post(f"{found.mock_url}/push/_mock/config", json=config)
            ).raise_for_status()
        outcome.receipts = receipts
        await _run_rounds(found, outcome, dsn, database_url, rounds)
    finally:
        for service in reversed(found.services):
            service.stop()
        await delete_topology(broker_settings(tag))
    return outcome


async def _posted(
    found: Pipeline, conn: RawConnection, db: asyncpg.Connection, outcome: Outcome
) -> Round:
    """One round; a failed one says what the consumer and the gateway logged."""
    for service in found.services:
        if service.process is not None and service.process.poll() is not None:
            raise BenchError(f"{service.name} died:\n{service.output()}")
    try:
        return await post_round(conn, db, outcome.group, receipts=outcome.receipts)
    except BenchError as exc:
        copies = await db.fetch(
            "SELECT status, attempts, last_error, count(*) FROM chat_recipients"
            " WHERE conversation_id = $1 GROUP BY 1, 2, 3",
            outcome.group.conversation_id,
        )
        pushes = await db.fetch(
            "SELECT status, last_error, count(*) FROM chat_pushes GROUP BY 1, 2 ORDER BY 3 DESC"
        )
        rows = "\n".join(str(tuple(r)) for r in [*copies, *pushes])
        logs = "\n".join(f"-- {n}:\n{found.service(n).output()}" for n in ("consumer", "mock-meta"))
        raise BenchError(f"{exc}\ncopies, then pushes:\n{rows}\n{logs}") from None


async def _run_rounds(
    found: Pipeline, outcome: Outcome, dsn: str, database_url: str, rounds: int
) -> None:
    conn = RawConnection(found.api_url, token(SENDER))
    db = await asyncpg.connect(dsn, timeout=10)
    pids = {s.name: s.pid for s in found.services}
    meter = CpuMeter(pids, database=make_url(database_url).database)
    try:
        await _posted(found, conn, db, outcome)  # warm-up: connections, first batches
        meter.start()
        for i in range(rounds):
            outcome.rounds.append(await _posted(found, conn, db, outcome))
            outcome.baseline_s.append(await baseline_round(db, outcome.group, i + 1))
        outcome.cpu_s = meter.stop()
        async with httpx.AsyncClient(timeout=5.0) as client:
            outcome.mock_stats = (await client.get(f"{found.mock_url}/push/_mock/stats")).json()
    finally:
        await db.close()
        await conn.close()


# -- the report -------------------------------------------------------------------------------


def _ms(values: list[float | None]) -> list[float]:
    return [v * 1000 for v in values if v is not None]


def summarize(outcome: Outcome) -> Result:
    rounds, n = outcome.rounds, outcome.group.recipients
    stages = {
        "POST → 202": _ms([r.accepted for r in rounds]),
        "POST → first SENT": _ms([r.first_sent for r in rounds]),
        f"POST → all {n} SENT": _ms([r.all_sent for r in rounds]),
        f"baseline: {n} rows SENT": _ms(list(outcome.baseline_s)),
    }
    delivered = _ms([r.all_delivered for r in rounds])
    if outcome.receipts:
        stages[f"POST → all {n} DELIVERED"] = delivered
    rows = [
        [name, len(v), median(v), min(v), max(v)] if v else [name, 0, "-", "-", "-"]
        for name, v in stages.items()
    ]
    all_sent = stages[f"POST → all {n} SENT"]
    base = median(stages[f"baseline: {n} rows SENT"])
    per_copy = {name: used / (n * len(rounds)) * 1000 for name, used in outcome.cpu_s.items()}
    metrics: dict[str, Any] = {
        "recipients": n,
        "rounds": len(rounds),
        "all_sent_ms": round(median(all_sent), 1),
        "all_sent_max_ms": round(max(all_sent), 1),
        "all_sent_per_round_ms": [round(v, 1) for v in all_sent],
        "accepted_ms": round(median(stages["POST → 202"]), 1),
        "receipts": outcome.receipts,
        "all_delivered_ms": round(median(delivered), 1) if delivered else None,
        "baseline_ms": round(base, 2),
        "ratio": round(median(all_sent) / base, 1),
        "failed": sum(r.failed for r in rounds),
        "cpu_ms_per_copy": {name: round(ms, 3) for name, ms in per_copy.items()},
        "push_gateway": outcome.mock_stats,
    }
    notes = [
        f"{len(rounds)} posts of one message to {n} recipients with one device each (after one "
        "warm-up post); target: the worst round's POST → all SENT ≤ 1 s; ratio = median POST "
        "→ all SENT ÷ median baseline (one transaction: the message + INSERT … SELECT of "
        "the copies as SENT)",
        "CPU ms per copy: "
        + ", ".join(f"{name} {ms:.2f}" for name, ms in per_copy.items())
        + f"; the push gateway received {outcome.mock_stats.get('received', '?')} pushes, "
        f"rate-limited {outcome.mock_stats.get('rateLimited', '?')}",
    ]
    return Result(
        name="chat_fanout",
        columns=["stage (ms)", "n", "median", "min", "max"],
        rows=rows,
        metrics=metrics,
        targets=[Target("all_sent_max_ms", "<", TARGET_S * 1000), Target("failed", "<", 1)],
        notes=notes,
    )


def run(
    *,
    quick: bool = False,
    members: int | None = None,
    rounds: int | None = None,
    receipts: bool = False,
) -> Result:
    members = members or (50 if quick else 1_000)
    rounds = rounds or (1 if quick else 5)
    tag = run_id()
    with bench_database(f"fanout_{tag}") as database_url:
        limit = 120 + (rounds + 1) * (ROUND_TIMEOUT_S + RECEIPTS_TIMEOUT_S)
        work = measure(database_url, tag, members, rounds, receipts=receipts)
        outcome = asyncio.run(asyncio.wait_for(work, limit))
    return summarize(outcome)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--members", type=int, default=None, help="default 1,000 (quick 50)")
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (quick 1)")
    parser.add_argument(
        "--receipts", action="store_true", help="the gateway posts delivery receipts too"
    )
    args = parser.parse_args(argv)
    result = run(quick=args.quick, members=args.members, rounds=args.rounds, receipts=args.receipts)
    return finish(result, check=args.check)


if __name__ == "__main__":
    sys.exit(main())
