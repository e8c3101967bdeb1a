"""Signed inbound webhooks (POST /webhooks/mock-meta) on the real API against a bare app.

Both servers run alike (one uvicorn worker in a subprocess, the options of
`python -m relaybox.api`): `relaybox` is `python -m bench.api_servers relaybox` (the real API,
settings from `RELAYBOX_*` with a real JWT secret and webhook signing secret, dev mode off);
`bare` is `python -m bench.webhook_ingest --serve-bare` (below): Litestar + an asyncpg pool of
the API's size checking the same HMAC signature and running the same SQL in one transaction
(webhook_events ON CONFLICT DO NOTHING; if the event is new, the conversation upsert
(unread + 1, last_message_at GREATEST) and the message INSERT), with no other validation than
msgspec's.

The load: N keep-alive connections posting back to back (closed loop) for a fixed time, inbound
message events to 200 participants (one conversation each); every fifth request is a
byte-identical resend (same body, same signature) of an event already acknowledged, which must
be answered `duplicate` and change nothing. After each phase the tables are checked: stored
events = distinct events sent, messages = stored events, sum of unread = messages, one
conversation per participant written to, and no answer other than 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from bench.api_servers import POOL_MAX, POOL_MIN, serve
from bench.common import (
    JWT_SECRET,
    BenchError,
    Result,
    Service,
    Target,
    base_parser,
    bench_database,
    cpu_seconds,
    emit_json,
    free_port,
    machine_busy_ticks,
    median,
    percentile,
    postgres_backends,
    render_table,
    run_id,
    truncate,
)
from bench.loadgen import RawConnection
from relaybox.common.db.session import asyncpg_dsn
from relaybox.common.signing import SIGNATURE_HEADER, sign, verify

PATH = "/webhooks/mock-meta"
# At least 16 characters and not the development default (which the API refuses outside dev).
SECRET = "bench-webhook-ingest-signing-secret"
PARTICIPANTS = 200
DUPLICATE_EVERY = 5  # every 5th request resends an acknowledged event: 20% duplicates
KINDS = ("bare", "relaybox")
TARGET_RPS = 1_000.0
TARGET_P99_MS = 50.0
PREVIEW_CHARS = 200  # relaybox.api.conversations.service.PREVIEW_CHARS


# -- the bare server --------------------------------------------------------------------------

INSERT_EVENT = """
INSERT INTO webhook_events (provider, event_id, kind, payload, applied_at)
VALUES ('mock-meta', $1, 'message', $2::jsonb, now())
ON CONFLICT (provider, event_id) DO NOTHING RETURNING id
"""
UPSERT_CONVERSATION = """
INSERT INTO conversations
    (id, tenant_id, channel, participant_id, unread_count, last_message_at, last_message_preview)
VALUES ($1, 'dev', $2, $3, 1, $4, $5)
ON CONFLICT (tenant_id, channel, participant_id) DO UPDATE SET
    last_message_at = GREATEST(conversations.last_message_at, EXCLUDED.last_message_at),
    last_message_preview = CASE
        WHEN conversations.last_message_at IS NULL
          OR EXCLUDED.last_message_at >= conversations.last_message_at
        THEN EXCLUDED.last_message_preview ELSE conversations.last_message_preview END,
    updated_at = now(),
    unread_count = conversations.unread_count + 1,
    status = 'open',
    archived_at = NULL
RETURNING id
"""
INSERT_MESSAGE = """
INSERT INTO messages (id, conversation_id, tenant_id, direction, channel, participant_id, text,
                      status, provider_event_id, sort_at)
VALUES ($1, $2, 'dev', 'inbound', $3, $4, $5, 'RECEIVED', $6, $7)
"""
JSON = "application/json"


class InboundEvent(msgspec.Struct, rename={"event_id": "eventId", "sender": "from"}):
    event_id: str
    channel: Literal["whatsapp", "instagram"]
    sender: str
    text: str
    timestamp: datetime
    type: Literal["message"] = "message"


def bare_app(database_url: str, secret: str) -> Litestar:
    """The baseline: signature check, msgspec decoding, raw asyncpg; no other validation."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        pool = await asyncpg.create_pool(database_url, min_size=POOL_MIN, max_size=POOL_MAX)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    @post(PATH, status_code=200)
    async def receive(request: Request[Any, Any, State]) -> Response[bytes]:
        body = await request.body()
        if not verify(secret, body, request.headers.get(SIGNATURE_HEADER)):
            return Response(b'{"detail":"bad signature"}', status_code=401, media_type=JSON)
        try:
            event = msgspec.json.decode(body, type=InboundEvent)
        except msgspec.DecodeError as exc:
            return Response(msgspec.json.encode({"detail": str(exc)}), status_code=400)
        pool: asyncpg.Pool = request.app.state.pool
        status = "duplicate"
        async with pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(INSERT_EVENT, event.event_id, body.decode()) is not None:
                status = "processed"
                conversation_id = await conn.fetchval(
                    UPSERT_CONVERSATION,
                    uuid.uuid4(),
                    event.channel,
                    event.sender,
                    event.timestamp,
                    event.text[:PREVIEW_CHARS],
                )
                await conn.execute(
                    INSERT_MESSAGE,
                    uuid.uuid4(),
                    conversation_id,
                    event.channel,
                    event.sender,
                    event.text,
                    event.event_id,
                    event.timestamp,
                )
        ack = msgspec.json.encode({"status": status, "eventId": event.event_id})
        return Response(ack, status_code=200, media_type=JSON)

    @get("/ready", sync_to_thread=False)
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return Litestar([receive, ready], lifespan=[lifespan], openapi_config=None, debug=False)


def serve_bare(port: int) -> None:
    url = os.environ["RELAYBOX_DATABASE__URL"].replace("+asyncpg", "")
    app = bare_app(url, os.environ["RELAYBOX_META__WEBHOOK_SECRET"])
    serve(app, port)


# -- the load ---------------------------------------------------------------------------------


class WebhookConnection(RawConnection):
    """`bench.loadgen.RawConnection` (no bearer token) posting signed events to PATH."""

    async def post_event(self, event: Event) -> tuple[int, bytes]:
        return await self.request(PATH, event.body, {SIGNATURE_HEADER: event.signature})


@dataclass(frozen=True)
class Event:
    event_id: str
    conversation: tuple[str, str]  # (channel, participant)
    body: bytes
    signature: str


def participant(index: int) -> tuple[str, str]:
    """(channel, participant id) of one of the PARTICIPANTS conversations."""
    return ("whatsapp" if index % 2 == 0 else "instagram", f"+1555{index:07d}")


class Feed:
    """The events of one phase: new ones to random participants; every DUPLICATE_EVERY-th
    request a byte-identical resend of an event already acknowledged."""

    def __init__(self, prefix: str, seed: int) -> None:
        self._prefix = prefix
        self._rng = random.Random(seed)
        self._requests = 0
        self.new: list[Event] = []  # every distinct event sent
        self.acked: list[Event] = []  # those answered `processed`
        self.duplicates = 0

    def next(self) -> tuple[Event, bool]:
        """The event to send and whether it is a duplicate."""
        self._requests += 1
        if self._requests % DUPLICATE_EVERY == 0 and self.acked:
            self.duplicates += 1
            return self._rng.choice(self.acked), True
        seq = len(self.new)
        channel, sender = participant(self._rng.randrange(PARTICIPANTS))
        event_id = f"evt.{self._prefix}.{seq}"
        moment = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = json.dumps(
            {
                "eventId": event_id,
                "type": "message",
                "channel": channel,
                "from": sender,
                "text": f"Hello from the benchmark, message {seq}",
                "timestamp": moment,
            },
            separators=(",", ":"),
        ).encode()
        event = Event(event_id, (channel, sender), body, sign(SECRET, body))
        self.new.append(event)
        return event, False


@dataclass(frozen=True)
class LoadSpec:
    concurrency: int
    warmup_s: float
    seconds: float


@dataclass(frozen=True)
class Stored:
    """What the tables hold after a phase."""

    events: int
    messages: int
    distinct_message_events: int
    conversations: int
    unread: int


@dataclass
class Phase:
    """One measured window against one server, and the check of the tables after it."""

    kind: str
    spec: LoadSpec
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0  # non-200 answers inside the window
    statuses: Counter[int] = field(default_factory=Counter)  # every answer of the phase
    wrong_acks: int = 0  # 200 but `processed` for a duplicate or `duplicate` for a new event
    requests: int = 0
    duplicates: int = 0
    distinct_sent: int = 0
    distinct_acked: int = 0
    conversations_sent: int = 0
    stored: Stored | None = None
    server_cpu: float | None = None  # share of one core over the window
    postgres_cpu: float | None = None
    client_cpu: float = 0.0
    machine_busy: float | None = None  # share of all cores busy over the window

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.spec.seconds

    def per_event_ms(self, share: float | None) -> float | None:
        """CPU milliseconds per acknowledged request in the window."""
        if share is None or not self.latencies_ms:
            return None
        return share * self.spec.seconds / len(self.latencies_ms) * 1000

    def problems(self) -> list[str]:
        """Why the run is not trustworthy; empty when the tables match what was sent."""
        found = []
        if self.stored is None:
            return ["the tables were not checked"]
        s = self.stored
        not_ok = {k: v for k, v in self.statuses.items() if k != 200}
        if any(k >= 500 for k in not_ok):
            found.append(f"5xx answers: {dict(not_ok)}")
        elif not_ok:
            found.append(f"answers other than 200: {dict(not_ok)}")
        if self.wrong_acks:
            found.append(f"{self.wrong_acks} answers said processed/duplicate wrongly")
        # A request that failed in transport (status 0) may or may not have been stored.
        if not self.distinct_acked <= s.events <= self.distinct_sent:
            found.append(
                f"webhook_events holds {s.events}, {self.distinct_sent} distinct events were "
                f"sent ({self.distinct_acked} acknowledged)"
            )
        if not s.messages == s.distinct_message_events == s.events:
            found.append(
                f"messages holds {s.messages} ({s.distinct_message_events} distinct events) "
                f"for {s.events} events"
            )
        if s.unread != s.messages:
            found.append(f"unread counts add up to {s.unread}, not {s.messages}")
        if s.conversations != self.conversations_sent and not_ok.get(0) is None:
            found.append(f"{s.conversations} conversations, {self.conversations_sent} expected")
        return found


async def probe(url: str) -> None:
    """One signed event first: a server that cannot take one is an error, not a slow result."""
    feed = Feed(f"probe.{uuid.uuid4().hex[:8]}", 0)
    event, _ = feed.next()
    conn = WebhookConnection(url)
    try:
        status, content = await conn.post_event(event)
    finally:
        await conn.close()
    if status != 200:
        raise BenchError(f"POST {url}{PATH} answered {status} {content[:300]!r}")


async def stored(dsn: str) -> Stored:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        events = await conn.fetchval("SELECT count(*) FROM webhook_events")
        messages = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT provider_event_id) AS d FROM messages"
        )
        conversations = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(unread_count), 0) AS unread FROM conversations"
        )
    finally:
        await conn.close()
    assert messages is not None
    assert conversations is not None
    return Stored(
        events=events,
        messages=messages["n"],
        distinct_message_events=messages["d"],
        conversations=conversations["n"],
        unread=int(conversations["unread"]),
    )


async def load(kind: str, url: str, pid: int, database: str, spec: LoadSpec, seed: int) -> Phase:
    """Closed-loop load on `concurrency` connections; count what completes inside the window."""
    phase = Phase(kind, spec)
    feed = Feed(f"{kind}.{seed}", seed)
    start = time.monotonic()
    window_start, window_end = start + spec.warmup_s, start + spec.warmup_s + spec.seconds
    before: dict[str, Any] = {}

    async def user(conn: WebhookConnection) -> None:
        while (sent := time.monotonic()) < window_end:
            event, duplicate = feed.next()
            status, content = await conn.post_event(event)
            now = time.monotonic()
            phase.statuses[status] += 1
            if status == 200:
                expected = b'"duplicate"' if duplicate else b'"processed"'
                if expected not in content:
                    phase.wrong_acks += 1
                elif not duplicate:
                    feed.acked.append(event)
            if window_start <= sent and now <= window_end:
                if status == 200:
                    phase.latencies_ms.append((now - sent) * 1000)
                else:
                    phase.errors += 1

    async def sample() -> None:
        await asyncio.sleep(max(0.0, window_start - time.monotonic()))
        before["server"] = cpu_seconds(pid)
        before["postgres"] = postgres_backends(database)
        before["client"] = time.process_time()
        before["machine"] = machine_busy_ticks()

    connections = [WebhookConnection(url) for _ in range(spec.concurrency)]
    try:
        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(user(c) for c in connections))
        await sampler
    finally:
        for conn in connections:
            await conn.close()
    server_after, postgres_after = cpu_seconds(pid), postgres_backends(database)
    machine_after = machine_busy_ticks()
    if before["machine"] is not None and machine_after is not None:
        total = machine_after[1] - before["machine"][1]
        phase.machine_busy = (machine_after[0] - before["machine"][0]) / total if total else None
    phase.client_cpu = (time.process_time() - before["client"]) / spec.seconds
    if before["server"] is not None and server_after is not None:
        phase.server_cpu = (server_after - before["server"]) / spec.seconds
    if postgres_after:
        used = sum(v - before["postgres"].get(p, 0.0) for p, v in postgres_after.items())
        phase.postgres_cpu = used / spec.seconds
    phase.requests = sum(phase.statuses.values())
    phase.duplicates = feed.duplicates
    phase.distinct_sent = len(feed.new)
    phase.distinct_acked = len(feed.acked)
    phase.conversations_sent = len({e.conversation for e in feed.new})
    return phase


def _servers(database_url: str) -> dict[str, tuple[Service, str]]:
    env = {
        "RELAYBOX_DATABASE__URL": database_url,
        "RELAYBOX_AUTH__JWT_SECRET": JWT_SECRET,
        "RELAYBOX_META__WEBHOOK_SECRET": SECRET,
        "RELAYBOX_PUSH__WEBHOOK_SECRET": SECRET,
        "RELAYBOX_META__ALLOW_UNSIGNED": "false",
        "RELAYBOX_DEV_MODE": "false",
    }
    found: dict[str, tuple[Service, str]] = {}
    for kind in KINDS:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if kind == "relaybox":
            argv = ["-m", "bench.api_servers", "relaybox", "--port", str(port)]
        else:
            argv = ["-m", "bench.webhook_ingest", "--serve-bare", str(port)]
        found[kind] = (Service(kind, argv, env, ready_url=f"{url}/ready"), url)
    return found


async def measure(database_url: str, spec: LoadSpec, rounds: int) -> dict[str, list[Phase]]:
    dsn = asyncpg_dsn(database_url)
    database = make_url(database_url).database or ""
    servers = _servers(database_url)
    phases: dict[str, list[Phase]] = {kind: [] for kind in KINDS}
    try:
        for service, _ in servers.values():
            service.start()
        for service, url in servers.values():
            await service.wait_ready()
            await probe(url)
        for round_no in range(rounds):
            for kind in KINDS if round_no % 2 == 0 else tuple(reversed(KINDS)):
                service, url = servers[kind]
                await truncate(dsn)
                phase = await load(kind, url, service.pid, database, spec, seed=round_no)
                if service.process is not None and service.process.poll() is not None:
                    raise BenchError(f"{kind} died during the run:\n{service.output()}")
                if not phase.latencies_ms:
                    raise BenchError(
                        f"{kind}: no request succeeded ({dict(phase.statuses)}):\n"
                        f"{service.output()}"
                    )
                phase.stored = await stored(dsn)
                phases[kind].append(phase)
    finally:
        for service, _ in servers.values():
            service.stop()
    return phases


# -- report -----------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value * 100:.0f}%"


def _median_or_nan(values: list[float | None]) -> float:
    known = [v for v in values if v is not None]
    return median(known) if known else float("nan")


def summarize(phases: dict[str, list[Phase]], spec: LoadSpec) -> tuple[Result, list[str]]:
    """The result, and what failed the check of the tables (empty when all is well)."""
    rps = {kind: median([p.rps for p in runs]) for kind, runs in phases.items()}
    p50 = {k: percentile([x for p in r for x in p.latencies_ms], 50) for k, r in phases.items()}
    p99 = {k: percentile([x for p in r for x in p.latencies_ms], 99) for k, r in phases.items()}
    server_ms = {
        k: _median_or_nan([p.per_event_ms(p.server_cpu) for p in r]) for k, r in phases.items()
    }
    postgres_ms = {
        k: _median_or_nan([p.per_event_ms(p.postgres_cpu) for p in r]) for k, r in phases.items()
    }
    failures = [
        f"{kind} round {i + 1}: {problem}"
        for kind, runs in phases.items()
        for i, phase in enumerate(runs)
        for problem in phase.problems()
    ]
    rows = []
    for kind in KINDS:
        runs = phases[kind]
        requests = sum(p.requests for p in runs)
        rows.append(
            [
                kind,
                rps[kind],
                rps[kind] / rps["bare"],
                " ".join(f"{p.rps:.0f}" for p in runs),
                p50[kind],
                p99[kind],
                sum(p.errors for p in runs),
                f"{sum(p.duplicates for p in runs) / requests:.0%}" if requests else "n/a",
                " ".join(f"{p.stored.events if p.stored else 0}/{p.distinct_sent}" for p in runs),
                "ok" if not any(p.problems() for p in runs) else "FAIL",
                _pct(_median_or_nan([p.server_cpu for p in runs])),
                server_ms[kind],
                postgres_ms[kind],
                _pct(median([p.client_cpu for p in runs])),
                _pct(_median_or_nan([p.machine_busy for p in runs])),
            ]
        )
    notes = [
        "ratio = relaybox events/s / bare events/s (bare: the same HMAC check and the same "
        "three statements in one transaction on raw asyncpg; no target on it)",
        f"closed loop: {spec.concurrency} connections post back to back, so latency is about "
        "connections / throughput; p99 is measured at the server's saturation",
        "stored/sent: webhook_events rows / distinct events sent, per round (both include the "
        "warm-up); dup: share of requests that resent an acknowledged event byte for byte",
        "server cpu: share of one core used by the server process; cpu ms/ev: server CPU per "
        "acknowledged request; pg ms/ev: the PostgreSQL backends' CPU per request; machine "
        "busy: all cores (other work on the machine slows both servers)",
    ]
    notes += [f"CHECK FAILED: {failure}" for failure in failures]
    metrics = {
        "relaybox_events_per_s": round(rps["relaybox"], 1),
        "bare_events_per_s": round(rps["bare"], 1),
        "ratio": round(rps["relaybox"] / rps["bare"], 3),
        "relaybox_p50_ms": round(p50["relaybox"], 2),
        "relaybox_p99_ms": round(p99["relaybox"], 2),
        "bare_p50_ms": round(p50["bare"], 2),
        "bare_p99_ms": round(p99["bare"], 2),
        "relaybox_cpu_ms_per_event": round(server_ms["relaybox"], 3),
        "bare_cpu_ms_per_event": round(server_ms["bare"], 3),
        "relaybox_pg_cpu_ms_per_event": round(postgres_ms["relaybox"], 3),
        "bare_pg_cpu_ms_per_event": round(postgres_ms["bare"], 3),
        "errors": sum(p.errors for runs in phases.values() for p in runs),
        "verified": not failures,
        "concurrency": spec.concurrency,
        "seconds": spec.seconds,
        "rounds": len(phases["bare"]),
        "participants": PARTICIPANTS,
        "duplicate_share": 1 / DUPLICATE_EVERY,
    }
    result = Result(
        name="webhook_ingest",
        columns=[
            "server",
            "events/s",
            "ratio",
            "per round",
            "p50 ms",
            "p99 ms",
            "errors",
            "dup",
            "stored/sent",
            "check",
            "server cpu",
            "cpu ms/ev",
            "pg ms/ev",
            "client cpu",
            "machine busy",
        ],
        rows=rows,
        metrics=metrics,
        targets=[
            Target("relaybox_events_per_s", ">=", TARGET_RPS),
            Target("relaybox_p99_ms", "<", TARGET_P99_MS),
        ],
        notes=notes,
    )
    return result, failures


def run(
    *,
    quick: bool = False,
    concurrency: int = 16,
    seconds: float | None = None,
    rounds: int | None = None,
    strict: bool = True,
) -> Result:
    """The result. When the tables do not match what was sent (events lost or doubled, 5xx),
    `strict` raises BenchError; otherwise `metrics["verified"]` is False and the notes say why."""
    laps = rounds or (1 if quick else 2)
    warmup_s = 0.5 if quick else 2.0
    spec = LoadSpec(concurrency, warmup_s, seconds or (3.0 if quick else 15.0))
    budget = 120 + laps * len(KINDS) * (warmup_s + spec.seconds) * 2
    with bench_database(f"webhook_{run_id()}") as database_url:
        phases = asyncio.run(asyncio.wait_for(measure(database_url, spec, laps), budget))
    result, failures = summarize(phases, spec)
    if strict and failures:
        raise BenchError("; ".join(failures))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--concurrency", type=int, default=16, help="connections (default 16)")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per phase")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 2; quick: 1)")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare is not None:
        serve_bare(args.serve_bare)
        return 0
    try:
        result = run(
            quick=args.quick,
            concurrency=args.concurrency,
            seconds=args.seconds,
            rounds=args.rounds,
            strict=False,
        )
    except (BenchError, OSError, TimeoutError, asyncpg.PostgresError, SQLAlchemyError) as exc:
        print(f"webhook_ingest could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        emit_json({"bench": "webhook_ingest", "ok": False, "error": f"{type(exc).__name__}"})
        return 2
    render_table(result)
    payload = result.as_json()
    verified = bool(result.metrics["verified"])
    payload["ok"] = payload["ok"] and verified
    emit_json(payload)
    if not verified:
        return 2  # the numbers do not count: events were lost, doubled or refused
    return 1 if args.check and not result.ok else 0


if __name__ == "__main__":
    sys.exit(main())
