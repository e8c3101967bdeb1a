"""What the messenger benchmarks share: one tenant and its users' tokens, the real API in a
subprocess, chat text with natural word frequencies, a bulk loader for messages, timed GETs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url

from bench.common import (
    JWT_SECRET,
    WEBHOOK_SECRET,
    BenchError,
    CpuMeter,
    Result,
    Service,
    free_port,
    median,
    percentile,
)
from bench.loadgen import RawConnection
from relaybox.api.auth import issue_token
from relaybox.api.settings import ApiSettings, AuthSettings
from relaybox.common.db.session import asyncpg_dsn

TENANT = "bench-org"
TENANT_CLAIM = "org"  # users of one organisation share its conversations
CHAT_SCOPES = ("chat:read", "chat:write")
API_POOL = {"RELAYBOX_DATABASE__POOL_SIZE": "4", "RELAYBOX_DATABASE__MAX_OVERFLOW": "2"}

# -- tokens and the API -----------------------------------------------------------------------


def token(user: str) -> str:
    """A bearer token of `user` in the benchmark's tenant, with the chat scopes (not `admin`)."""
    settings = ApiSettings(auth=AuthSettings(jwt_secret=JWT_SECRET, tenant_claim=TENANT_CLAIM))
    return issue_token(settings, user, scopes=CHAT_SCOPES, tenant=TENANT)


def api_env(database_url: str) -> dict[str, str]:
    """The real API's settings (`RELAYBOX_*`): a real JWT secret, the tenant claim, dev mode
    off, a small pool (the benchmarks send one request at a time)."""
    return {
        "RELAYBOX_DATABASE__URL": database_url,
        "RELAYBOX_AUTH__JWT_SECRET": JWT_SECRET,
        "RELAYBOX_AUTH__TENANT_CLAIM": TENANT_CLAIM,
        "RELAYBOX_META__WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RELAYBOX_PUSH__WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RELAYBOX_RATE_LIMIT__SEND_PER_MINUTE": "1000000000",
        "RELAYBOX_DEV_MODE": "false",
        **API_POOL,
    }


@contextlib.asynccontextmanager
async def real_api(database_url: str) -> AsyncIterator[tuple[Service, str]]:
    """The real API as `python -m bench.api_servers relaybox` runs it (one uvicorn worker, as
    `python -m relaybox.api` starts), and its URL; stopped on exit. It is started, not yet
    ready (`await service.wait_ready()`): a benchmark seeds its data while it boots."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = ["-m", "bench.api_servers", "relaybox", "--port", str(port)]
    service = Service("api", argv, api_env(database_url), ready_url=f"{url}/ready")
    service.start()
    try:
        yield service, url
    finally:
        service.stop()


# -- chat text --------------------------------------------------------------------------------

_COMMON = """
the you to i and a it is that for of in we on this be can have so do with not are at just will
but if me my ok what from about know get up all was now out need think one there yes no thanks
let like meeting when how see today should time more some back then tomorrow call send check
please sure good here could done would also team still did work right been looking new week
update before after review any them our going great next look they fix file build test merge
release friday monday morning later issue client deploy link doc sorry sounds lunch branch ticket
"""
COMMON_WORDS = _COMMON.split()
"""Chat's most frequent words, most frequent first (ranks 1-110)."""
NAMED_WORDS = {111: "invoice", 40_000: "zeppelin"}
"""Words placed at a frequency rank: `invoice` is in ~1% of the messages, `zeppelin` in ~3 per
100,000 (rank r is in about 1.1/r of the messages: see `ChatText`)."""
VOCABULARY_SIZE = 50_000
_SYLLABLES = "ka lo mi re su ta ven dor pil qua zen bri sto mar fel gu nox tri al eb on ru sa ti be"
SYLLABLES = _SYLLABLES.split()


def vocabulary(size: int = VOCABULARY_SIZE) -> list[str]:
    """Words by frequency rank (index 0 = rank 1): chat's common English words, the named
    words at their ranks, then invented words (deterministic) for the long tail."""
    rng = random.Random(1)
    words = list(dict.fromkeys(COMMON_WORDS))
    taken = set(words) | set(NAMED_WORDS.values())
    while len(words) < size - len(NAMED_WORDS):
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word not in taken:
            taken.add(word)
            words.append(word)
    for rank, word in sorted(NAMED_WORDS.items()):
        words.insert(rank - 1, word)
    return words


class ChatText:
    """Messages of 3-21 words (mean 12) drawn with Zipf's law (s = 1) from `vocabulary()`:
    rank r is drawn with probability ln(1 + 1/r) / ln(V), so rank 1 is 6% of the words and a
    word of rank r shows in about 12 / (r ln V) ≈ 1.1 / r of the messages."""

    def __init__(self, seed: int) -> None:
        self._words = vocabulary()
        self._rng = random.Random(seed)

    def text(self) -> str:
        r, words, size = self._rng.random, self._words, float(len(self._words))
        return " ".join([words[int(size ** r()) - 1] for _ in range(3 + int(r() * 19))])

    def uuid(self) -> str:
        """A random (version 4) uuid as text, from this generator's seed."""
        bits = self._rng.getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48)
        return f"{bits | (0x4000 << 64) | (0x8000 << 48):032x}"


# -- bulk loading -----------------------------------------------------------------------------

CHUNK_ROWS = 50_000
REBUILT_INDEXES = (
    "ix_chat_messages_conversation_id_seq",
    "ix_chat_messages_conversation_id_search",
)
"""Dropped while loading and built again after: building the GIN index once is ~4x faster than
maintaining it row by row."""
MESSAGE_COLUMNS = ["id", "conversation_id", "tenant_id", "seq", "sender_id", "text", "created_at"]


@dataclass(frozen=True)
class Span:
    """Messages `first..last` (sequence numbers) of one conversation, `sender(seq)` posting each,
    one every `every` from `start`."""

    conversation_id: uuid.UUID
    first: int
    last: int
    sender: Callable[[int], str]
    start: datetime
    every: timedelta


Piece = tuple[Span, int, int]


def _chunks(spans: Sequence[Span]) -> list[list[Piece]]:
    """The spans cut into COPY chunks of at most `CHUNK_ROWS` rows (small spans share one)."""
    chunks: list[list[Piece]] = [[]]
    room = CHUNK_ROWS
    for span in spans:
        lo = span.first
        while lo <= span.last:
            hi = min(span.last, lo + room - 1)
            chunks[-1].append((span, lo, hi))
            room -= hi - lo + 1
            lo = hi + 1
            if room == 0:
                chunks.append([])
                room = CHUNK_ROWS
    return [chunk for chunk in chunks if chunk]


def _copy_text(chunk: list[Piece], text: ChatText) -> bytes:
    lines = []
    for span, lo, hi in chunk:
        conversation = str(span.conversation_id)
        for seq in range(lo, hi + 1):
            at = (span.start + (seq - span.first) * span.every).isoformat()
            sender = span.sender(seq)
            lines.append(
                f"{text.uuid()}\t{conversation}\t{TENANT}\t{seq}\t{sender}\t{text.text()}\t{at}\n"
            )
    return "".join(lines).encode()


async def load_messages(dsn: str, spans: Sequence[Span], seed: int = 11) -> int:
    """COPY the spans' messages into `chat_messages` (the `search` column is generated by
    PostgreSQL), on two connections while the next chunk is generated, with the two indexes
    of `REBUILT_INDEXES` built afterwards (in parallel). The number of rows loaded."""
    chunks = _chunks(spans)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=2)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        definitions = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE indexname = any($1::text[])",
            list(REBUILT_INDEXES),
        )
        if len(definitions) != len(REBUILT_INDEXES):
            raise BenchError(f"expected the indexes {REBUILT_INDEXES} on chat_messages")
        for row in definitions:
            await conn.execute(f"DROP INDEX {row['indexname']}")

        async def produce() -> None:
            text = ChatText(seed)
            for chunk in chunks:
                await queue.put(await asyncio.to_thread(_copy_text, chunk, text))
            for _ in range(2):
                await queue.put(None)

        async def copy() -> None:
            writer = await asyncpg.connect(dsn, timeout=10)
            try:
                await writer.execute("SET synchronous_commit = off")
                while (data := await queue.get()) is not None:
                    await writer.copy_to_table(
                        "chat_messages", source=io.BytesIO(data), columns=MESSAGE_COLUMNS
                    )
            finally:
                await writer.close()

        await asyncio.gather(produce(), copy(), copy())
        await asyncio.gather(*(_run(dsn, row["indexdef"]) for row in definitions))
    finally:
        await conn.close()
    return sum(hi - lo + 1 for chunk in chunks for _, lo, hi in chunk)


async def _run(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("SET maintenance_work_mem = '256MB'")
        await conn.execute(sql)
    finally:
        await conn.close()


# -- timed requests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Latencies:
    """Latencies (ms) of one side of one query over a phase, and the CPU it used per request
    (ms) in the API process and in the database's PostgreSQL backends."""

    values: list[float]
    errors: int = 0
    api_cpu_ms: float | None = None
    pg_cpu_ms: float | None = None

    def p(self, q: float) -> float:
        return percentile(self.values, q) if self.values else float("nan")


def _per_request(meter: CpuMeter, name: str, count: int) -> float | None:
    used = meter.used.get(name)
    return used / count * 1000 if used is not None and count else None


async def timed(
    call: Callable[[], Awaitable[tuple[int, bytes]]],
    meter: CpuMeter,
    *,
    warmup_s: float,
    seconds: float,
) -> Latencies:
    """`call` back to back (one at a time): a warm-up, then the measured window, over which
    `meter` counts CPU. Anything but a 200 is an error; one during the warm-up ends the run
    (except a failed connection: the server closes an idle keep-alive connection after 5 s, and
    the next call opens a new one)."""
    values: list[float] = []
    errors = 0
    start = time.monotonic()
    window, end = start + warmup_s, start + warmup_s + seconds
    started = False
    while (sent := time.monotonic()) < end:
        if not started and sent >= window:
            meter.start()
            started = True
        status, body = await call()
        took = (time.monotonic() - sent) * 1000
        if status != 200:
            if sent < window and status != 0:  # 0: a connection the server closed while idle
                raise BenchError(f"answered {status}: {body[:300]!r}")
            errors += sent >= window
        elif started:
            values.append(took)
    meter.stop()
    count = len(values) + errors
    return Latencies(
        values,
        errors,
        _per_request(meter, "api", count),
        _per_request(meter, CpuMeter.BACKENDS, count),
    )


async def timed_gets(
    conn: RawConnection, path: str, meter: CpuMeter, *, warmup_s: float, seconds: float
) -> Latencies:
    """GET `path` back to back on one keep-alive connection."""
    return await timed(lambda: conn.get(path), meter, warmup_s=warmup_s, seconds=seconds)


async def timed_queries(
    conn: asyncpg.Connection,
    sql: str,
    args: Sequence[object],
    meter: CpuMeter,
    *,
    warmup_s: float,
    seconds: float,
) -> Latencies:
    """The same SQL through asyncpg alone (a prepared statement, as SQLAlchemy's driver runs
    it), back to back, with the same warm-up and window as `timed_gets`."""

    async def query() -> tuple[int, bytes]:
        await conn.fetch(sql, *args)
        return 200, b""

    return await timed(query, meter, warmup_s=warmup_s, seconds=seconds)


def utc(days_ago: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days_ago)


# -- relaybox against the same SQL alone ------------------------------------------------------


def driver_sql(stmt: Any) -> tuple[str, list[Any]]:
    """A SQLAlchemy statement compiled as the API's driver sends it: SQL with $n parameters
    (run as a prepared statement), and the parameters' values."""
    compiled = stmt.compile(dialect=PGDialect_asyncpg())  # type: ignore[no-untyped-call]
    return str(compiled), [compiled.params[name] for name in compiled.positiontup or []]


@dataclass(frozen=True)
class Case:
    """One read: the API request, and the statement the API runs for it, alone."""

    name: str
    path: str
    sql: str
    args: list[Any]
    detail: str = ""


@dataclass
class Compared:
    """Per case, the latencies of each round: through the API and as the raw SQL."""

    api: dict[str, list[Latencies]] = field(default_factory=dict)
    raw: dict[str, list[Latencies]] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Pace:
    """How long each case is measured: rounds, and each side's warm-up and window per round."""

    rounds: int
    warmup_s: float
    seconds: float

    @classmethod
    def of(cls, quick: bool, rounds: int | None = None) -> Pace:
        warmup_s, seconds = (0.1, 0.3) if quick else (1.0, 4.0)
        return cls(rounds or (1 if quick else 3), warmup_s, seconds)

    def budget_s(self, cases: int) -> float:
        """A time limit for a run of `cases` (startup and seeding aside: 300 s)."""
        return 300 + self.rounds * cases * 2 * (self.warmup_s + self.seconds)


async def compare(
    cases: Sequence[Case],
    *,
    api: tuple[Service, str],
    database_url: str,
    user: str,
    pace: Pace,
    check: Callable[[str], Awaitable[None]] | None = None,
) -> Compared:
    """Once the API (`real_api`) is ready and `check(url)` passed on its answer: each case as
    `user` through the API (one keep-alive connection) and as its SQL through one asyncpg
    connection, rounds alternating which goes first; then each case's plans."""
    service, url = api
    await service.wait_ready()
    if check is not None:
        await check(url)
    return await _compare(cases, service, url, user, database_url, pace)


async def _compare(
    cases: Sequence[Case], api: Service, url: str, user: str, database_url: str, pace: Pace
) -> Compared:
    compared = Compared()
    client = RawConnection(url, token(user))
    raw = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    meter = CpuMeter({"api": api.pid}, database=make_url(database_url).database)
    window = {"warmup_s": pace.warmup_s, "seconds": pace.seconds}
    try:
        for case in cases:
            await _same_rows(client, raw, case)
        for round_no in range(pace.rounds):
            for case in cases:
                for side in ("api", "raw") if round_no % 2 == 0 else ("raw", "api"):
                    if side == "api":
                        try:
                            found = await timed_gets(client, case.path, meter, **window)
                        except BenchError as exc:
                            raise BenchError(f"GET {case.path}: {exc}\n{api.output()}") from None
                    else:
                        found = await timed_queries(raw, case.sql, case.args, meter, **window)
                    getattr(compared, side).setdefault(case.name, []).append(found)
        for case in cases:
            compared.plans[case.name] = await explain(raw, case.sql, case.args)
    finally:
        await raw.close()
        await client.close()
    return compared


async def _same_rows(client: RawConnection, raw: asyncpg.Connection, case: Case) -> None:
    """The API's page lists the rows the baseline's SQL returns (by id, in order): the two
    sides measure the same work."""
    status, body = await client.get(case.path)
    if status != 200:
        raise BenchError(f"GET {case.path} answered {status}: {body[:300]!r}")
    shown = [str(item["id"]) for item in json.loads(body)["data"]]
    found = [str(row[0]) for row in await raw.fetch(case.sql, *case.args)]
    if shown != found[: len(shown)] or len(found) - len(shown) > 1:  # the SQL reads one more
        raise BenchError(f"{case.name}: the API listed {shown[:3]}…, the SQL {found[:3]}…")


def with_plans(result: Result, compared: Compared, explain_all: bool) -> Result:
    """The result, with every case's plans in its notes when asked or when a target was missed."""
    if explain_all or not result.ok:
        for name, plan in compared.plans.items():
            result.notes.append(f"plan of {name} (raw SQL):\n{plan}")
    return result


async def explain(conn: asyncpg.Connection, sql: str, args: Sequence[Any]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) with the parameters' values (the custom plan), then the generic
    plan a prepared statement may switch to after five runs."""
    custom = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        generic = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
    finally:
        await conn.execute("RESET plan_cache_mode")
    lines = ["custom plan:", *(r[0] for r in custom), "generic plan:", *(r[0] for r in generic)]
    return "\n".join(lines)


def merged(runs: list[Latencies]) -> Latencies:
    """Every round's latencies together; the median CPU per request of the rounds."""
    api = [r.api_cpu_ms for r in runs if r.api_cpu_ms is not None]
    pg = [r.pg_cpu_ms for r in runs if r.pg_cpu_ms is not None]
    return Latencies(
        [v for run in runs for v in run.values],
        sum(run.errors for run in runs),
        median(api) if api else None,
        median(pg) if pg else None,
    )


COLUMNS = [
    "case",
    "detail",
    "side",
    "n",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "api cpu ms",
    "pg cpu ms",
    "errors",
]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def key(name: str) -> str:
    """A case's name as a metric prefix."""
    return name.replace(" ", "_").replace("%", "pct")


def report(cases: Sequence[Case], compared: Compared) -> tuple[list[list[Any]], dict[str, Any]]:
    """Table rows (relaybox and raw per case) and metrics: `<case>_p50_ms`, `_p99_ms`, the raw
    figures, `_ratio_p50`/`_ratio_p99` (relaybox ÷ raw), CPU per request, errors."""
    rows: list[list[Any]] = []
    metrics: dict[str, Any] = {}
    for case in cases:
        api, raw = merged(compared.api[case.name]), merged(compared.raw[case.name])
        for side, found in (("relaybox", api), ("raw asyncpg", raw)):
            first = side == "relaybox"
            rows.append(
                [
                    case.name if first else "",
                    case.detail if first else "",
                    side,
                    len(found.values),
                    found.p(50),
                    found.p(90),
                    found.p(99),
                    max(found.values) if found.values else float("nan"),
                    _ms(found.api_cpu_ms) if first else "",
                    _ms(found.pg_cpu_ms),
                    found.errors if first else "",
                ]
            )
        prefix = key(case.name)
        metrics.update(
            {
                f"{prefix}_p50_ms": round(api.p(50), 2),
                f"{prefix}_p99_ms": round(api.p(99), 2),
                f"{prefix}_raw_p50_ms": round(raw.p(50), 3),
                f"{prefix}_raw_p99_ms": round(raw.p(99), 3),
                f"{prefix}_ratio_p50": round(api.p(50) / raw.p(50), 2),
                f"{prefix}_ratio_p99": round(api.p(99) / raw.p(99), 2),
                f"{prefix}_api_cpu_ms": _round(api.api_cpu_ms),
                f"{prefix}_pg_cpu_ms": _round(api.pg_cpu_ms),
                f"{prefix}_raw_pg_cpu_ms": _round(raw.pg_cpu_ms),
                f"{prefix}_p99_per_round": [round(r.p(99), 1) for r in compared.api[case.name]],
                f"{prefix}_errors": api.errors,
            }
        )
    metrics["errors"] = sum(metrics[f"{key(c.name)}_errors"] for c in cases)
    return rows, metrics


def context_notes() -> list[str]:
    """What else ran: the load average when the run ended (other work on the machine moves
    the latencies; the CPU per request moves much less)."""
    one, five, _ = os.getloadavg()
    return [
        f"load average at the end {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} "
        "cores; api cpu ms / pg cpu ms: CPU per request of the API process / of the "
        "database's PostgreSQL backends (steadier than latency on a shared machine)"
    ]
