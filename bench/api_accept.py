"""POST /send throughput of the real API against a bare Litestar + asyncpg app (same INSERTs).

The servers run alike (`bench.api_servers`: one uvicorn worker in a subprocess, same options).
The load is N concurrent keep-alive connections posting back to back (closed loop), each request
with a fresh Idempotency-Key and the bearer token; only the window after the warm-up counts.
Rounds alternate the servers; the median of each is reported.

Clients (`bench.loadgen`): `raw` (default): a minimal HTTP/1.1 client on asyncio streams, ~10x
cheaper per request than httpx, so the servers and not the client set the pace on a small
machine; `httpx`: one httpx.AsyncClient per connection (one client with a pool of 32 busy
connections collapses: httpcore's pool costs more CPU than the server).

Four rounds of 8 s (the median counts): on two cores shared with PostgreSQL and the load, one
round of either server can come out 20% off its usual pace.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass

import httpx

from bench import e2e_latency
from bench.common import (
    JWT_SECRET,
    WEBHOOK_SECRET,
    BenchError,
    Result,
    Service,
    Target,
    base_parser,
    bench_database,
    cpu_seconds,
    finish,
    free_port,
    machine_busy_ticks,
    median,
    percentile,
    run_id,
    truncate,
)
from bench.loadgen import CLIENTS, Connection, HttpxConnection, Pool, connection
from relaybox.api.auth import issue_token
from relaybox.api.settings import ApiSettings, AuthSettings

BODY = json.dumps(
    {"to": "user@example.com", "subject": "Benchmark", "text": "Hello from the benchmark"}
).encode()
KINDS = ("bare", "relaybox", "bare-full")
TARGET_RATIO = 0.9
TARGET_CPU_RATIO = 0.8  # bare's CPU per request / relaybox's (steadier than req/s on a shared box)
CLIENT_BOUND = 0.8  # a client using more than this share of a core may be what sets the pace


@dataclass(frozen=True)
class Phase:
    """One measured window against one server."""

    kind: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    server_cpu: float | None
    client_cpu: float
    machine_busy: float | None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms(self) -> float | None:
        """Server CPU per accepted request: steadier than req/s on a shared, busy machine."""
        if self.server_cpu is None or not self.requests:
            return None
        return self.server_cpu * self.seconds / self.requests * 1000


# -- load -------------------------------------------------------------------------------------


async def probe(url: str, token: str, *, keyed: bool) -> None:
    """One request first: a server that cannot accept at all is an error, not a slow result."""
    conn = HttpxConnection(url, token)
    try:
        status, _ = await conn.post("/send", BODY, uuid.uuid4().hex if keyed else None)
        if status != 202:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            if keyed:
                headers["Idempotency-Key"] = uuid.uuid4().hex
            async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
                response = await client.post("/send", content=BODY, headers=headers)
            hint = " (--no-idempotency-key measures the path without it)" if keyed else ""
            raise BenchError(
                f"POST {url}/send answered {response.status_code} {response.text[:300]!r}{hint}"
            )
    finally:
        await conn.close()


@dataclass(frozen=True)
class LoadSpec:
    client: str
    concurrency: int
    warmup_s: float
    seconds: float
    keyed: bool
    rate: float | None = None  # open loop at this many requests/s (None: closed loop)


async def load(kind: str, url: str, token: str, pid: int, spec: LoadSpec) -> Phase:
    """Closed-loop load on `concurrency` connections; count what completes inside the window."""
    latencies: list[float] = []
    errors = 0
    start = time.monotonic()
    window_start, window_end = start + spec.warmup_s, start + spec.warmup_s + spec.seconds
    snapshot: dict[str, float | tuple[int, int] | None] = {}

    async def user(conn: Connection) -> None:
        nonlocal errors
        while (sent := time.monotonic()) < window_end:
            status, _ = await conn.post("/send", BODY, uuid.uuid4().hex if spec.keyed else None)
            now = time.monotonic()
            if window_start <= sent and now <= window_end:
                if status == 202:
                    latencies.append((now - sent) * 1000)
                else:
                    errors += 1

    async def open_loop() -> None:
        """The e2e benchmark's open loop (request i at start + i / rate, on an idle connection
        or a new one); the window's answers are counted as the closed loop counts them."""
        nonlocal errors
        assert spec.rate
        timing = e2e_latency.Spec(spec.rate, spec.warmup_s, spec.seconds, spec.keyed, spec.client)
        pool = Pool(spec.client, url, token)
        try:
            sent = (await e2e_latency.generate(pool, timing)).sent
        finally:
            await pool.close()
        for record in sent:
            if record.warmup:
                continue
            if record.status == 202 and record.accepted is not None:
                latencies.append((record.accepted - record.started) * 1000)
            else:
                errors += 1

    async def sample() -> None:
        await asyncio.sleep(max(0.0, window_start - time.monotonic()))
        snapshot["server"] = cpu_seconds(pid)
        snapshot["client"] = time.process_time()
        snapshot["machine"] = machine_busy_ticks()

    closed_loop = 0 if spec.rate else spec.concurrency  # the open loop has its own pool
    connections = [connection(spec.client, url, token) for _ in range(closed_loop)]
    try:
        sampler = asyncio.create_task(sample())
        if spec.rate:
            await open_loop()
        else:
            await asyncio.gather(*(user(c) for c in connections))
        await sampler
    finally:
        for conn in connections:
            await conn.close()
    server_after, machine_after = cpu_seconds(pid), machine_busy_ticks()
    server_before, machine_before = snapshot["server"], snapshot["machine"]
    client_before = snapshot["client"]
    assert isinstance(client_before, float)
    server_cpu = None
    if isinstance(server_before, float) and server_after is not None:
        server_cpu = (server_after - server_before) / spec.seconds
    busy = None
    if isinstance(machine_before, tuple) and machine_after is not None:
        total = machine_after[1] - machine_before[1]
        busy = (machine_after[0] - machine_before[0]) / total if total else None
    return Phase(
        kind=kind,
        requests=len(latencies),
        errors=errors,
        seconds=spec.seconds,
        latencies_ms=latencies,
        server_cpu=server_cpu,
        client_cpu=(time.process_time() - client_before) / spec.seconds,
        machine_busy=busy,
    )


def _servers(database_url: str) -> dict[str, tuple[Service, str]]:
    env = {
        "RELAYBOX_DATABASE__URL": database_url,
        "RELAYBOX_AUTH__JWT_SECRET": JWT_SECRET,
        "RELAYBOX_META__WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RELAYBOX_PUSH__WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RELAYBOX_RATE_LIMIT__SEND_PER_MINUTE": "1000000000",
        "RELAYBOX_DEV_MODE": "false",
    }
    found: dict[str, tuple[Service, str]] = {}
    for kind in KINDS:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = ["-m", "bench.api_servers", kind, "--port", str(port)]
        found[kind] = (Service(kind, argv, env, ready_url=f"{url}/ready"), url)
    return found


async def measure(database_url: str, spec: LoadSpec, rounds: int) -> dict[str, list[Phase]]:
    token = issue_token(ApiSettings(auth=AuthSettings(jwt_secret=JWT_SECRET)), "bench")
    servers = _servers(database_url)
    phases: dict[str, list[Phase]] = {kind: [] for kind in KINDS}
    try:
        for service, _ in servers.values():
            service.start()
        for service, url in servers.values():
            await service.wait_ready()
            await probe(url, token, keyed=spec.keyed)
        for round_no in range(rounds):
            for kind in KINDS if round_no % 2 == 0 else tuple(reversed(KINDS)):
                service, url = servers[kind]
                await truncate(database_url)
                phase = await load(kind, url, token, service.pid, spec)
                if phase.requests == 0:
                    raise BenchError(f"{kind}: no request succeeded:\n{service.output()}")
                phases[kind].append(phase)
    finally:
        for service, _ in servers.values():
            service.stop()
    return phases


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def summarize(phases: dict[str, list[Phase]], spec: LoadSpec) -> Result:
    rps = {kind: median([p.rps for p in runs]) for kind, runs in phases.items()}
    cpu_ms = {
        kind: median([p.cpu_ms for p in runs if p.cpu_ms is not None] or [float("nan")])
        for kind, runs in phases.items()
    }
    base = rps["bare"]
    rows = []
    for kind in KINDS:
        runs = phases[kind]
        latencies = [x for p in runs for x in p.latencies_ms]
        cpu = [p.server_cpu for p in runs if p.server_cpu is not None]
        busy = [p.machine_busy for p in runs if p.machine_busy is not None]
        rows.append(
            [
                kind,
                rps[kind],
                rps[kind] / base,
                " ".join(f"{p.rps:.0f}" for p in runs),
                percentile(latencies, 50),
                percentile(latencies, 99),
                sum(p.errors for p in runs),
                _pct(median(cpu) if cpu else None),
                cpu_ms[kind],
                _pct(median([p.client_cpu for p in runs])),
                _pct(median(busy) if busy else None),
            ]
        )
    notes = [
        "ratio = relaybox req/s / bare req/s (bare: the emails + outbox INSERTs in one "
        "transaction); bare-full adds the idempotency SQL and NOTIFY the real API also runs",
        "server cpu: share of one core used by the server process; machine busy: all cores; "
        "cpu ms/req: server CPU per request (cpu_ratio = bare / relaybox, steadier than "
        "req/s when other work shares the machine)",
    ]
    if not spec.keyed:
        notes.append("run WITHOUT Idempotency-Key (--no-idempotency-key)")
    if spec.rate:
        notes.append(
            f"open loop at {spec.rate:g} requests/s (--rate): every server answers that rate, "
            "so req/s and its ratio say nothing; cpu ms/req is what a request costs at this "
            "rate, when each one pays its own wake-ups (no target: the targets are for the "
            "closed loop)"
        )
    bare_client = median([p.client_cpu for p in phases["bare"]])
    if bare_client > CLIENT_BOUND:
        notes.append(
            f"the load generator used {bare_client:.0%} of a core against bare: the baseline "
            "is client-bound and the ratio flattered (--client raw gives the servers' pace)"
        )
    metrics = {
        "relaybox_rps": round(rps["relaybox"], 1),
        "bare_rps": round(base, 1),
        "bare_full_rps": round(rps["bare-full"], 1),
        "ratio": round(rps["relaybox"] / base, 3),
        "ratio_vs_bare_full": round(rps["relaybox"] / rps["bare-full"], 3),
        "relaybox_cpu_ms_per_req": round(cpu_ms["relaybox"], 3),
        "bare_cpu_ms_per_req": round(cpu_ms["bare"], 3),
        "bare_full_cpu_ms_per_req": round(cpu_ms["bare-full"], 3),
        "cpu_ratio": round(cpu_ms["bare"] / cpu_ms["relaybox"], 3),
        "errors": sum(p.errors for runs in phases.values() for p in runs),
        "client": spec.client,
        "concurrency": spec.concurrency,
        "seconds": spec.seconds,
        "rounds": len(phases["bare"]),
        "idempotency_key": spec.keyed,
        "open_loop_rate": spec.rate,
    }
    return Result(
        name="api_accept",
        columns=[
            "server",
            "req/s",
            "ratio",
            "per round",
            "p50 ms",
            "p99 ms",
            "errors",
            "server cpu",
            "cpu ms/req",
            "client cpu",
            "machine busy",
        ],
        rows=rows,
        metrics=metrics,
        targets=[]
        if spec.rate
        else [
            Target("ratio", ">=", TARGET_RATIO),
            Target("cpu_ratio", ">=", TARGET_CPU_RATIO),
        ],
        notes=notes,
    )


def run(
    *,
    quick: bool = False,
    client: str = "raw",
    concurrency: int = 32,
    keyed: bool = True,
    rate: float | None = None,
) -> Result:
    rounds, warmup_s, seconds = (1, 0.5, 2.0) if quick else (4, 2.0, 8.0)
    spec = LoadSpec(client, concurrency, warmup_s, seconds, keyed, rate)
    budget = 120 + rounds * len(KINDS) * (warmup_s + seconds) * 2
    with bench_database(f"api_{run_id()}") as database_url:
        phases = asyncio.run(asyncio.wait_for(measure(database_url, spec, rounds), budget))
    return summarize(phases, spec)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--client", choices=CLIENTS, default="raw")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--no-idempotency-key", action="store_true", help="send no Idempotency-Key header"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open loop at this many requests/s instead of the closed loop (CPU per request "
        "at a fixed rate; no targets)",
    )
    args = parser.parse_args(argv)
    result = run(
        quick=args.quick,
        client=args.client,
        concurrency=args.concurrency,
        keyed=not args.no_idempotency_key,
        rate=args.rate,
    )
    return finish(result, check=args.check)


if __name__ == "__main__":
    sys.exit(main())
