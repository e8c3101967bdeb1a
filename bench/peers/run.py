"""relaybox against its peers, side by side in one run: `python -m bench.peers`.

Every build does the same job: an HTTP endpoint takes `{to, subject, text}`, writes one row in
PostgreSQL, the email goes through the same SMTP sink (in this process, counting each copy by
Message-ID), and the row is marked SENT.

- `relaybox`: its real services from their entrypoints, as `bench.e2e_latency` starts them (API,
  publisher, consumer).
- `celery`: Litestar + asyncpg, the row committed then `send_email.delay(id)`; the worker as
  Celery's docs start it, `celery -A bench.peers.celery_app worker`, with Celery's defaults.
- `dramatiq`: the same endpoint with `send_email.send(id)`; `dramatiq bench.peers.dramatiq_app`.
- `celery-acks-late` (only with `--builds`): Celery with `task_acks_late` and
  `task_reject_on_worker_lost`.

Per build, one after another: a fixed-rate phase (open loop; e2e p50/p99 from the 202 to the
sink, CPU per email of every process of the build and of its PostgreSQL backends), a saturation
phase (closed loop; accepted/s and delivered/s in the same window), and a kill phase (closed
loop, so that the worker is busy; halfway through, `kill -9` of the worker — relaybox's consumer,
Celery's or Dramatiq's worker with its child processes — and a restart; then what the sink
received against the accepted ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
from sqlalchemy.engine import make_url

from bench import e2e_latency
from bench.common import (
    AMQP_URL,
    JWT_SECRET,
    BenchError,
    Result,
    Service,
    Target,
    base_parser,
    bench_database,
    broker_settings,
    cpu_seconds,
    delete_topology,
    finish,
    free_port,
    percentile,
    postgres_backends,
    run_id,
)
from bench.loadgen import Pool, RawConnection
from bench.peers import env
from bench.peers.ledger import CountingSink, Tally, tally
from relaybox.api.auth import issue_token
from relaybox.api.settings import ApiSettings, AuthSettings
from relaybox.common import runtime
from relaybox.common.db.session import asyncpg_dsn

BUILDS = ("relaybox", "celery", "dramatiq", "celery-acks-late")
DEFAULT_BUILDS = ("relaybox", "celery", "dramatiq")
PEERS_TABLE = "peer_emails"
# relaybox after a crash: a row left SENDING is sent again once its lease ran out (60 s by
# default), through the first retry tier at least as long as what is left of the lease (5 s by
# default); both shortened so that the recovery happens within the run.
RELAYBOX_LEASE_S = 2.0
RELAYBOX_RETRY_DELAYS_MS = [2_000, 30_000, 120_000, 600_000]
# Celery's own exchanges (remote control, events), declared by any worker: removed after the run.
CELERY_EXCHANGES = ["celeryev", "celery.pidbox", "reply.celery.pidbox"]
STOP_GRACE_S = 1.0  # SIGTERM, then SIGKILL: how a build shuts down is not measured
BODY = e2e_latency.BODY


@dataclass(frozen=True)
class Spec:
    rate: float  # the fixed offered rate of the latency phase
    warmup_s: float
    seconds: float
    sat_warmup_s: float
    sat_seconds: float
    connections: int  # closed-loop connections of the saturation and kill phases
    kill_seconds: float  # the kill phase's load; the kill comes halfway
    drain_idle_s: float  # stop waiting for the rest when nothing arrived for this long
    drain_limit_s: float
    settle_s: float  # after everything arrived in the kill phase: late duplicates


FULL = Spec(
    rate=100.0,
    warmup_s=2.0,
    seconds=15.0,
    sat_warmup_s=2.0,
    sat_seconds=10.0,
    connections=32,
    kill_seconds=10.0,
    drain_idle_s=15.0,
    drain_limit_s=240.0,
    settle_s=3.0,
)
QUICK = Spec(
    rate=50.0,
    warmup_s=0.5,
    seconds=2.0,
    sat_warmup_s=0.3,
    sat_seconds=1.0,
    connections=4,
    kill_seconds=1.5,
    drain_idle_s=5.0,
    drain_limit_s=60.0,
    settle_s=1.0,
)


# -- processes --------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: with the pid, its identity (a pid
    alone may have been reused by the time a signal is sent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def kill_if_same(pid: int, started: str | None) -> None:
    """SIGKILL `pid` if it is still the process that started at `started`."""
    if started is not None and start_time(pid) == started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and of every process below it (Celery's and Dramatiq's worker
    processes are children of the command that was started)."""
    return sum(cpu_seconds(p) or 0.0 for p in [pid, *descendants(pid)])


def rabbitmq_pid() -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "beam.smp":
                    return int(entry.name)
    return None


def kill_tree(service: Service) -> int:
    """`kill -9` of a service and every process below it; how many processes were killed."""
    assert service.process is not None
    pids = [(p, start_time(p)) for p in [service.pid, *descendants(service.pid)]]
    for pid, started in pids:  # the parent first: it cannot start a replacement child
        kill_if_same(pid, started)
    service.process.wait(10)
    return len(pids)


def stop_all(services: Sequence[Service]) -> None:
    """SIGTERM to every service at once (their own shutdown), SIGKILL to what is left after
    `STOP_GRACE_S`, the processes below them included."""
    below = [
        (p, start_time(p)) for s in services if s.process is not None for p in descendants(s.pid)
    ]
    for service in services:
        if service.process is not None and service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for service in services:
        if service.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(max(deadline - time.monotonic(), 0.01))
        service.stop(0.1)  # SIGKILL if still there; closes the log
    for pid, started in below:
        kill_if_same(pid, started)


class TreeMeter:
    """CPU seconds used between `start()` and `stop()` by each service's process tree, the
    database's PostgreSQL backends, and RabbitMQ (shared with anything else using the broker)."""

    BACKENDS = "postgres"
    RABBITMQ = "rabbitmq"

    def __init__(self, services: Sequence[Service], database: str) -> None:
        self._services = services
        self._database = database
        self._rabbit = rabbitmq_pid()
        self._before: dict[str, float] = {}
        self._backends: dict[int, float] = {}

    def _now(self) -> dict[str, float]:
        found = {s.name: tree_cpu(s.pid) for s in self._services}
        if self._rabbit is not None:
            found[self.RABBITMQ] = cpu_seconds(self._rabbit) or 0.0
        return found

    def start(self) -> None:
        self._before = self._now()
        self._backends = postgres_backends(self._database)

    def stop(self) -> dict[str, float]:
        used = {name: value - self._before.get(name, 0.0) for name, value in self._now().items()}
        now = postgres_backends(self._database)
        used[self.BACKENDS] = sum(v - self._backends.get(p, 0.0) for p, v in now.items())
        return used


# -- builds -----------------------------------------------------------------------------------


@dataclass
class Build:
    name: str
    table: str
    api: Service
    worker: Service  # what the kill phase kills
    others: list[Service]
    api_url: str
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)

    @property
    def services(self) -> list[Service]:
        return [self.api, *self.others, self.worker]


def make_build(name: str, database_url: str, tag: str, smtp_port: int) -> Build:
    if name == "relaybox":
        procs, api_url = e2e_latency.services(database_url, tag, smtp_port)
        api, publisher, consumer = procs
        for proc in procs:
            proc.env["RELAYBOX_BROKER__RETRY_DELAYS_MS"] = json.dumps(RELAYBOX_RETRY_DELAYS_MS)
        consumer.env["RELAYBOX_LEASE_S"] = str(RELAYBOX_LEASE_S)
        return Build(name, "emails", api, consumer, [publisher], api_url)
    framework = "celery" if name.startswith("celery") else "dramatiq"
    queue = f"bench.{tag}.{name}"
    settings = {
        env.DATABASE_URL: asyncpg_dsn(database_url),
        env.AMQP_URL: AMQP_URL,
        env.QUEUE: queue,
        env.SMTP_HOST: "127.0.0.1",
        env.SMTP_PORT: str(smtp_port),
        env.CELERY_ACKS_LATE: "1" if name == "celery-acks-late" else "0",
    }
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    api = Service(
        "api",
        ["-m", "bench.peers.web", framework, "--port", str(port)],
        settings,
        ready_url=f"{api_url}/ready",
    )
    if framework == "celery":
        argv = ["-m", "celery", "-A", "bench.peers.celery_app", "worker", "--loglevel=WARNING"]
        argv += ["--hostname", f"{name}-{tag}@%h"]
        return Build(name, PEERS_TABLE, api, Service("worker", argv, settings), [], api_url,
                     queues=[queue], exchanges=[queue, *CELERY_EXCHANGES])  # fmt: skip
    worker = Service("worker", ["-m", "dramatiq", "bench.peers.dramatiq_app"], settings)
    return Build(
        name, PEERS_TABLE, api, worker, [], api_url, queues=[queue, f"{queue}.DQ", f"{queue}.XQ"]
    )


async def delete_peer_topology(build: Build) -> None:
    """Best effort: the run's queues and exchanges of a peer."""
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(AMQP_URL, timeout=10)
        async with connection:
            for queue in build.queues:
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    await channel.queue_delete(queue)
            for exchange in build.exchanges:
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    await channel.exchange_delete(exchange)


async def post_one(url: str, token: str) -> str:
    conn = RawConnection(url, token)
    try:
        status, body = await conn.post("/send", BODY, uuid.uuid4().hex)
    finally:
        await conn.close()
    if status != 202:
        raise BenchError(f"{url}/send answered {status}: {body[:300]!r}")
    return str(json.loads(body)["id"])


async def start(
    build: Build, sink: CountingSink, token: str, known: set[str], database_url: str
) -> None:
    """Start every process, wait until each answers, then until a probe email reached the sink
    (the worker consumes). The peers' table is emptied first (each peer counts its own rows)."""
    if build.table == PEERS_TABLE:
        conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
        try:
            await conn.execute(f"TRUNCATE {PEERS_TABLE}")
        finally:
            await conn.close()
    for proc in build.services:
        proc.start()
    for proc in build.services:
        if proc.ready_url:
            await proc.wait_ready(60)
    probe = await post_one(build.api_url, token)
    known.add(probe)
    if not await sink.wait_for({probe}, idle_s=60, limit_s=60):
        outputs = "\n".join(f"--- {p.name}:\n{p.output()}" for p in build.services)
        raise BenchError(f"{build.name}: the probe email never arrived\n{outputs}")


def restart(service: Service) -> float:
    """Start a killed service again; the seconds that took (not its readiness)."""
    started = time.monotonic()
    service.stop()  # reaps the dead process and closes its log
    service.start()
    return time.monotonic() - started


# -- phases -----------------------------------------------------------------------------------


@dataclass
class LatencyPhase:
    tally: Tally
    p50_ms: float
    p99_ms: float
    accept_rate: float
    cpu_s: dict[str, float]
    behind_ms: float
    failed: int  # requests not answered 202


@dataclass
class SaturationPhase:
    tally: Tally
    accepted_per_s: float
    delivered_per_s: float
    drain_s: float
    failed: int


@dataclass
class KillPhase:
    tally: Tally
    killed: int  # processes
    not_sent_rows: int  # accepted rows not marked SENT after the drain
    failed: int


@dataclass
class BuildOutcome:
    name: str
    latency: LatencyPhase
    saturation: SaturationPhase
    kill: KillPhase
    stuck_rows: int  # rows of the build's table not SENT at the end (any phase)
    seconds: dict[str, float]  # wall time of each step


def e2e_spec(spec: Spec, warmup_s: float, seconds: float) -> e2e_latency.Spec:
    return e2e_latency.Spec(spec.rate, warmup_s, seconds, keyed=True, client="raw")


async def latency_phase(
    build: Build, sink: CountingSink, token: str, spec: Spec, known: set[str], database: str
) -> LatencyPhase:
    meter = TreeMeter(build.services, database)
    meter.start()
    pool = Pool("raw", build.api_url, token)
    try:
        load = await e2e_latency.generate(pool, e2e_spec(spec, spec.warmup_s, spec.seconds))
    finally:
        await pool.close()
    ids = {s.email_id for s in load.sent if s.email_id}
    await sink.wait_for(ids, idle_s=spec.drain_idle_s, limit_s=spec.drain_limit_s)
    cpu = meter.stop()
    counted = [s for s in load.sent if not s.warmup and s.email_id and s.accepted is not None]
    e2e = [
        (sink.first[s.email_id] - s.accepted) * 1000
        for s in counted
        if s.email_id in sink.first and s.accepted is not None
    ]
    if not e2e:
        raise BenchError(f"{build.name}: no email of the fixed-rate phase arrived")
    answered = [s.accepted for s in load.sent if s.accepted is not None and s.status == 202]
    accept_rate = len(answered) / max(max(answered) - load.sent[0].started, 1e-9)
    result = LatencyPhase(
        tally=tally(ids, sink.copies, known),
        p50_ms=percentile(e2e, 50),
        p99_ms=percentile(e2e, 99),
        accept_rate=accept_rate,
        cpu_s=cpu,
        behind_ms=load.behind_ms,
        failed=sum(1 for s in load.sent if s.status != 202),
    )
    known.update(ids)
    return result


async def closed_loop(
    url: str, token: str, connections: int, end: float
) -> tuple[list[tuple[float, str]], int]:
    """`connections` keep-alive connections, each posting again as soon as answered, until
    `end`: (answered-at, id) of every 202, and how many requests were not answered 202."""
    records: list[tuple[float, str]] = []
    failed = 0

    async def loop() -> None:
        nonlocal failed
        conn = RawConnection(url, token)
        try:
            while time.monotonic() < end:
                status, body = await conn.post("/send", BODY, uuid.uuid4().hex)
                if status == 202:
                    records.append((time.monotonic(), str(json.loads(body)["id"])))
                else:
                    failed += 1
                    if status == 0:
                        await asyncio.sleep(0.05)
        finally:
            await conn.close()

    await asyncio.gather(*(loop() for _ in range(connections)))
    return records, failed


async def saturation_phase(
    build: Build, sink: CountingSink, token: str, spec: Spec, known: set[str]
) -> SaturationPhase:
    begin = time.monotonic() + spec.sat_warmup_s
    end = begin + spec.sat_seconds
    records, failed = await closed_loop(build.api_url, token, spec.connections, end)
    ids = {email_id for _, email_id in records}
    accepted = sum(1 for at, _ in records if begin <= at < end)
    delivered = sink.arrived_between(begin, end)
    await sink.wait_for(ids, idle_s=spec.drain_idle_s, limit_s=spec.drain_limit_s)
    drain_s = max(max((sink.first.get(i, 0.0) for i in ids), default=end) - end, 0.0)
    result = SaturationPhase(
        tally=tally(ids, sink.copies, known),
        accepted_per_s=accepted / spec.sat_seconds,
        delivered_per_s=delivered / spec.sat_seconds,
        drain_s=drain_s,
        failed=failed,
    )
    known.update(ids)
    return result


async def kill_phase(
    build: Build, sink: CountingSink, token: str, spec: Spec, known: set[str], database_url: str
) -> KillPhase:
    """Closed-loop load as in the saturation phase, so that the worker is busy (a worker idle
    between two emails would lose nothing); halfway through, `kill -9` of the worker's process
    tree and a restart. Then wait for the rest, and a little more for late second copies."""
    killed = 0

    async def killer() -> None:
        nonlocal killed
        await asyncio.sleep(spec.kill_seconds / 2)
        killed = kill_tree(build.worker)
        restart(build.worker)

    end = time.monotonic() + spec.kill_seconds
    (records, failed), _ = await asyncio.gather(
        closed_loop(build.api_url, token, spec.connections, end), killer()
    )
    ids = {email_id for _, email_id in records}
    await sink.wait_for(ids, idle_s=spec.drain_idle_s, limit_s=spec.drain_limit_s)
    await asyncio.sleep(spec.settle_s)  # a redelivered copy of an email that already arrived
    if build.worker.process is not None and build.worker.process.poll() is not None:
        raise BenchError(f"{build.name}: the restarted worker died:\n{build.worker.output()}")
    result = KillPhase(
        tally=tally(ids, sink.copies, known),
        killed=killed,
        not_sent_rows=len(ids) - await count_sent(database_url, build.table, ids),
        failed=failed,
    )
    known.update(ids)
    return result


async def count_sent(database_url: str, table: str, ids: set[str]) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        sent: int = await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE id = ANY($1::uuid[]) AND status = 'SENT'",  # noqa: S608 - a constant
            list(ids),
        )
    finally:
        await conn.close()
    return sent


async def count_stuck(database_url: str, table: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        stuck: int = await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE status <> 'SENT'"  # noqa: S608 - a constant
        )
    finally:
        await conn.close()
    return stuck


async def measure_build(
    name: str,
    database_url: str,
    tag: str,
    sink: CountingSink,
    token: str,
    spec: Spec,
    known: set[str],
) -> BuildOutcome:
    """Start the build, run its three phases, stop it. `known`: every id accepted so far in the
    run (the sink is shared), updated."""
    build = make_build(name, database_url, tag, sink.port)
    database = make_url(database_url).database or ""
    seconds: dict[str, float] = {}
    clock = time.monotonic()

    def lap(step: str) -> None:
        nonlocal clock
        seconds[step] = time.monotonic() - clock
        clock = time.monotonic()

    try:
        await start(build, sink, token, known, database_url)
        lap("start")
        latency = await latency_phase(build, sink, token, spec, known, database)
        lap("fixed rate")
        saturation = await saturation_phase(build, sink, token, spec, known)
        lap("saturation")
        kill = await kill_phase(build, sink, token, spec, known, database_url)
        lap("kill")
        for proc in build.services:
            if proc.process is not None and proc.process.poll() is not None:
                raise BenchError(f"{build.name}: {proc.name} died:\n{proc.output()}")
        stuck = await count_stuck(database_url, build.table)
    finally:
        stop_all(build.services)
        if name == "relaybox":
            await delete_topology(broker_settings(tag))
        else:
            await delete_peer_topology(build)
        lap("stop")
    return BuildOutcome(name, latency, saturation, kill, stuck, seconds)


async def create_peer_table(database_url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        await conn.execute(env.TABLE_DDL)
    finally:
        await conn.close()


async def measure(database_url: str, tag: str, spec: Spec, builds: Sequence[str]) -> list[Any]:
    await create_peer_table(database_url)
    sink = CountingSink()
    await sink.start()
    token = issue_token(ApiSettings(auth=AuthSettings(jwt_secret=JWT_SECRET)), "bench")
    outcomes: list[BuildOutcome] = []
    known: set[str] = set()
    try:
        for name in builds:
            outcomes.append(await measure_build(name, database_url, tag, sink, token, spec, known))
    finally:
        await sink.stop()
    if sink.unreadable:
        raise BenchError(f"{sink.unreadable} messages reached the sink without a Message-ID")
    return outcomes


# -- report -----------------------------------------------------------------------------------


COLUMNS = [
    "build",
    "accepted/s",
    "delivered/s",
    "vs best peer",
    "p50 ms",
    "p99 ms",
    "cpu ms/email",
    "rabbitmq ms",
    "kill: lost",
    "kill: twice",
    "kill: not SENT",
    "lost (no kill)",
]


def cpu_per_email(outcome: BuildOutcome) -> tuple[float, float, dict[str, float]]:
    """(build processes + PostgreSQL, RabbitMQ, by process) in ms per email, fixed-rate phase."""
    emails = max(outcome.latency.tally.accepted, 1)
    by = {n: s / emails * 1000 for n, s in outcome.latency.cpu_s.items()}
    rabbit = by.pop(TreeMeter.RABBITMQ, 0.0)
    return sum(by.values()), rabbit, by


def summarize(outcomes: list[BuildOutcome], spec: Spec) -> Result:
    peers = [o for o in outcomes if o.name != "relaybox"]
    best = max(peers, key=lambda o: o.saturation.delivered_per_s, default=None)
    mine = next((o for o in outcomes if o.name == "relaybox"), None)
    rows: list[list[Any]] = []
    metrics: dict[str, Any] = {"rate_per_s": spec.rate, "builds": {}}
    notes: list[str] = []
    for o in outcomes:
        total, rabbit, by = cpu_per_email(o)
        ratio = o.saturation.delivered_per_s / best.saturation.delivered_per_s if best else 0.0
        lost_clean = o.latency.tally.lost + o.saturation.tally.lost
        rows.append(
            [
                o.name,
                o.saturation.accepted_per_s,
                o.saturation.delivered_per_s,
                f"{ratio:.2f}x",
                o.latency.p50_ms,
                o.latency.p99_ms,
                total,
                rabbit,
                o.kill.tally.lost,
                o.kill.tally.duplicates,
                o.kill.not_sent_rows,
                lost_clean,
            ]
        )
        metrics["builds"][o.name] = {
            "accepted_per_s": round(o.saturation.accepted_per_s, 1),
            "delivered_per_s": round(o.saturation.delivered_per_s, 1),
            "delivered_vs_best_peer": round(ratio, 3),
            "p50_ms": round(o.latency.p50_ms, 2),
            "p99_ms": round(o.latency.p99_ms, 2),
            "accept_rate_per_s": round(o.latency.accept_rate, 1),
            "cpu_ms_per_email": round(total, 2),
            "rabbitmq_cpu_ms_per_email": round(rabbit, 2),
            "cpu_ms_per_email_by_process": {n: round(v, 2) for n, v in by.items()},
            "kill": {
                "accepted": o.kill.tally.accepted,
                "lost": o.kill.tally.lost,
                "duplicates": o.kill.tally.duplicates,
                "unexpected": o.kill.tally.unexpected,
                "not_sent_rows": o.kill.not_sent_rows,
                "processes_killed": o.kill.killed,
                "failed_requests": o.kill.failed,
            },
            "lost_without_kill": lost_clean,
            "duplicates_without_kill": o.latency.tally.duplicates + o.saturation.tally.duplicates,
            "failed_requests": o.latency.failed + o.saturation.failed,
            "saturation_drain_s": round(o.saturation.drain_s, 1),
            "stuck_rows": o.stuck_rows,
            "seconds": {step: round(t, 1) for step, t in o.seconds.items()},
        }
        notes.append(
            f"{o.name}: CPU ms per email "
            + ", ".join(f"{n} {v:.2f}" for n, v in by.items())
            + f" (+ RabbitMQ {rabbit:.2f}); saturation drained {o.saturation.drain_s:.1f} s "
            f"after the load stopped; kill -9 of {o.kill.killed} process(es) with "
            f"{o.kill.tally.accepted} emails accepted around it: {o.kill.tally.lost} lost, "
            f"{o.kill.tally.duplicates} sent twice, {o.kill.not_sent_rows} rows not SENT; "
            f"rows never SENT at the end: {o.stuck_rows}; requests not answered 202: "
            f"{o.latency.failed + o.saturation.failed + o.kill.failed}; seconds: "
            + ", ".join(f"{step} {t:.1f}" for step, t in o.seconds.items())
        )
        if o.latency.accept_rate < 0.95 * spec.rate:
            notes.append(
                f"{o.name} accepted only {o.latency.accept_rate:.0f}/s of the {spec.rate:g}/s "
                "offered: its latencies include the queueing"
            )
    targets: list[Target] = []
    if mine is not None:
        metrics["relaybox_lost"] = (
            mine.kill.tally.lost + mine.latency.tally.lost + mine.saturation.tally.lost
        )
        targets.append(Target("relaybox_lost", "<", 1))
        if best is not None:
            metrics["best_peer"] = best.name
            metrics["delivered_ratio"] = round(
                mine.saturation.delivered_per_s / max(best.saturation.delivered_per_s, 1e-9), 3
            )
            metrics["p99_ratio"] = round(best.latency.p99_ms / max(mine.latency.p99_ms, 1e-9), 3)
            targets += [Target("delivered_ratio", ">=", 1.0), Target("p99_ratio", ">=", 1.0)]
            notes.append(
                f"best peer by delivered/s: {best.name}; delivered_ratio = relaybox ÷ it, "
                "p99_ratio = its p99 ÷ relaybox's (≥ 1: relaybox's p99 is lower or equal)"
            )
    notes.append(
        f"fixed rate {spec.rate:g}/s for {spec.seconds:g} s after {spec.warmup_s:g} s of warm-up; "
        f"saturation: {spec.connections} connections, {spec.sat_seconds:g} s after "
        f"{spec.sat_warmup_s:g} s; kill phase {spec.kill_seconds:g} s on the same connections, "
        f"the kill halfway; cpu = every process of the build + its PostgreSQL backends "
        f"(this machine: {os.cpu_count()} cores, shared)"
    )
    return Result(
        name="peers",
        columns=COLUMNS,
        rows=rows,
        metrics=metrics,
        targets=targets,
        notes=notes,
    )


def run(
    *,
    quick: bool = False,
    builds: Sequence[str] = DEFAULT_BUILDS,
    rate: float | None = None,
    seconds: float | None = None,
    connections: int | None = None,
) -> Result:
    base = QUICK if quick else FULL
    spec = Spec(
        **{
            **base.__dict__,
            "rate": rate or base.rate,
            "seconds": seconds or base.seconds,
            "connections": connections or base.connections,
        }
    )
    tag = run_id()
    with bench_database(f"peers_{tag}") as database_url:
        outcomes = runtime.run(
            asyncio.wait_for(measure(database_url, tag, spec, builds), 600 * len(builds))
        )
    return summarize(outcomes, spec)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument(
        "--builds",
        default=",".join(DEFAULT_BUILDS),
        help=f"comma-separated, in order, of: {', '.join(BUILDS)}",
    )
    parser.add_argument("--rate", type=float, default=None, help="the fixed offered rate (/s)")
    parser.add_argument("--seconds", type=float, default=None, help="fixed-rate phase (s)")
    parser.add_argument("--connections", type=int, default=None, help="saturation phase")
    args = parser.parse_args(argv)
    builds = [b.strip() for b in args.builds.split(",") if b.strip()]
    if unknown := [b for b in builds if b not in BUILDS]:
        parser.error(f"unknown builds: {', '.join(unknown)}")
    result = run(
        quick=args.quick,
        builds=builds,
        rate=args.rate,
        seconds=args.seconds,
        connections=args.connections,
    )
    return finish(result, check=args.check)


if __name__ == "__main__":
    sys.exit(main())
