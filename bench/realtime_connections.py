"""Connections: N concurrent WebSocket connections (default 5,000) on one realtime process, and
the resident memory it takes to hold them.

The replica runs from its real entrypoint (`python -m relaybox.realtime`, its own PostgreSQL and
RabbitMQ as configured); N users each open one socket with a bearer token offered as the
subprotocol (`relaybox.realtime.client.StreamClient`, from this process, at most 200 handshakes
at once): each is authenticated, attached to the replica's queue (one binding per user) and
greeted (`hello`, then `live`). Once all are greeted and the process has settled, its RSS
(`/proc/<pid>/status` VmRSS, and the peak VmHWM) is compared with the same process idle (ready,
no socket): the baseline. Then a sample of 100 sockets sends `ping` and must get `pong` (the
sockets are alive, not just open).

The open-files limit is raised (`RLIMIT_NOFILE`, inherited by the replica) to hold 2 x N
sockets on this machine (the clients' ends and the server's).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.chat_common import token
from bench.common import (
    BenchError,
    CpuMeter,
    Result,
    Target,
    base_parser,
    bench_database,
    broker_settings,
    delete_topology,
    finish,
    median,
    percentile,
    run_id,
)
from bench.realtime_common import (
    close_clients,
    open_clients,
    raise_open_files,
    rss_mb,
    stack,
)
from relaybox.realtime.client import StreamClient

TARGET_RSS_MB = 500.0
SETTLE_S = 3.0
PING_SAMPLE = 100


@dataclass
class Outcome:
    connections: int
    idle_rss_mb: float = 0.0
    rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    connect_s: float = 0.0
    ping_ms: list[float] = field(default_factory=list)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    bench_rss_mb: float = 0.0
    failed_attempts: int = 0
    nofile: int = 0


async def measure(database_url: str, tag: str, connections: int, hold_s: float) -> Outcome:
    outcome = Outcome(connections, nofile=raise_open_files(2 * connections + 1000))
    if outcome.nofile < 2 * connections + 100:
        raise BenchError(
            f"the open-files limit is {outcome.nofile}: too low for {connections} sockets"
        )
    found = stack(database_url, tag, api=False)
    clients: list[StreamClient] = []
    try:
        found.start()
        await found.wait_ready(60)
        replica = found.realtime[0]
        await asyncio.sleep(1.0)
        outcome.idle_rss_mb, _ = rss_mb(replica.pid)
        tokens = [token(f"user{i:05d}") for i in range(connections)]
        meter = CpuMeter({"realtime": replica.pid})
        meter.start()
        started, cpu = time.monotonic(), time.process_time()
        clients = await open_clients(found.stream_url(0), tokens, auto_ack=False)
        outcome.connect_s = time.monotonic() - started
        outcome.client_cpu_s = time.process_time() - cpu
        await asyncio.sleep(max(SETTLE_S, hold_s))
        found.check_alive()
        outcome.server_cpu_s = meter.stop().get("realtime", 0.0)
        outcome.rss_mb, outcome.peak_rss_mb = rss_mb(replica.pid)
        sample = random.Random(1).sample(clients, min(PING_SAMPLE, len(clients)))
        outcome.ping_ms = [await c.ping() * 1000 for c in sample]
        closed = [c for c in clients if not c.connected]
        if closed:
            raise BenchError(f"{len(closed)} of {connections} sockets were closed while held")
        outcome.failed_attempts = sum(c.stats.failed_attempts for c in clients)
        outcome.bench_rss_mb, _ = rss_mb(os.getpid())
    finally:
        await close_clients(clients)
        found.stop()
        await delete_topology_quietly(tag)
    return outcome


async def delete_topology_quietly(tag: str) -> None:
    try:
        await delete_topology(broker_settings(tag))
    except Exception as exc:  # noqa: BLE001 - the numbers stand; say what was left
        print(f"note: the topology of run {tag} was not deleted: {exc!r}", file=sys.stderr)


def summarize(outcome: Outcome) -> Result:
    n = outcome.connections
    per_kb = (outcome.rss_mb - outcome.idle_rss_mb) * 1024 / n
    rows: list[list[Any]] = [
        ["idle replica (baseline)", 0, outcome.idle_rss_mb, "-", "-"],
        [f"{n:,} sockets held", n, outcome.rss_mb, outcome.peak_rss_mb, per_kb],
    ]
    metrics: dict[str, Any] = {
        "connections": n,
        "rss_mb": round(outcome.rss_mb, 1),
        "peak_rss_mb": round(outcome.peak_rss_mb, 1),
        "idle_rss_mb": round(outcome.idle_rss_mb, 1),
        "ratio": round(outcome.rss_mb / outcome.idle_rss_mb, 2),
        "kb_per_connection": round(per_kb, 1),
        "connect_s": round(outcome.connect_s, 2),
        "connects_per_s": round(n / outcome.connect_s, 1),
        "server_cpu_ms_per_connect": round(outcome.server_cpu_s / n * 1000, 3),
        "client_cpu_ms_per_connect": round(outcome.client_cpu_s / n * 1000, 3),
        "ping_p50_ms": round(median(outcome.ping_ms), 2),
        "ping_p99_ms": round(percentile(outcome.ping_ms, 99), 2),
        "failed_attempts": outcome.failed_attempts,
        "bench_rss_mb": round(outcome.bench_rss_mb, 1),
        "open_files_limit": outcome.nofile,
    }
    notes = [
        f"{n:,} users, one socket each (bearer subprotocol), opened {n / outcome.connect_s:,.0f}"
        f"/s (≤ 200 handshakes at once; {outcome.failed_attempts} retried); the replica used "
        f"{metrics['server_cpu_ms_per_connect']} ms CPU per connect (auth, binding, hello; "
        f"over the window including the hold), the clients {metrics['client_cpu_ms_per_connect']}"
        " ms",
        f"RSS: {outcome.rss_mb:.1f} MB held vs {outcome.idle_rss_mb:.1f} MB idle "
        f"(ratio {metrics['ratio']}x, {per_kb:.1f} KB per socket); peak {outcome.peak_rss_mb:.1f}"
        f" MB; the clients (this process) {outcome.bench_rss_mb:.0f} MB",
        f"ping → pong on {len(outcome.ping_ms)} sockets: p50 {metrics['ping_p50_ms']} ms, "
        f"p99 {metrics['ping_p99_ms']} ms",
    ]
    return Result(
        name="realtime_connections",
        columns=["replica", "sockets", "rss MB", "peak MB", "KB/socket"],
        rows=rows,
        metrics=metrics,
        targets=[Target("rss_mb", "<", TARGET_RSS_MB)],
        notes=notes,
    )


def run(*, quick: bool = False, connections: int | None = None, hold_s: float = 0.0) -> Result:
    connections = connections or (300 if quick else 5_000)
    tag = run_id()
    with bench_database(f"rtconn_{tag}") as database_url:
        work = measure(database_url, tag, connections, hold_s)
        outcome = asyncio.run(asyncio.wait_for(work, 300 + connections / 20 + hold_s))
    return summarize(outcome)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--connections", type=int, default=None, help="default 5,000 (quick 300)")
    parser.add_argument(
        "--hold", type=float, default=0.0, help="seconds to hold them before measuring (≥ 3)"
    )
    args = parser.parse_args(argv)
    result = run(quick=args.quick, connections=args.connections, hold_s=args.hold)
    return finish(result, check=args.check)


if __name__ == "__main__":
    sys.exit(main())
