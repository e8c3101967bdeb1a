"""Latency: `POST /chat/messages` → the `message.created` frame on every recipient's socket, for
a 100-member group at 100 messages/s, against a bare WebSocket fan-out of the same frames at
the same rate.

Every service runs from its real entrypoint: the API, the publisher, the consumer (the copies'
`chat.deliver`: no member has a device, so each copy is SENT at once) and one realtime replica
(`python -m relaybox.realtime`). The group (seeded directly) has M members (default 100); each
member holds one socket (`relaybox.realtime.client.StreamClient`, bearer subprotocol, acks off
unless `--ack`), all in this process, so the POST and the frames use one clock. Open-loop load:
message i starts at t0 + i/rate whether or not earlier ones were answered, from one of 10
senders in turn, with `clientMessageId` = its number; each recipient's frame is matched by it.
A warm-up (2 s) is not counted.

Baseline (`bare`): a websockets server in a subprocess (`python -m bench.realtime_latency
--serve-bare PORT`) that sends every frame one socket sends it to the M - 1 other sockets, fed
at the same rate with frames of the same size: the floor a socket fan-out costs on this machine
without authentication, PostgreSQL, RabbitMQ or the API. The ratios are relaybox ÷ bare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import make_url
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from bench.chat_common import token
from bench.common import (
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
    free_port,
    median,
    percentile,
    run_id,
)
from bench.loadgen import Pool
from bench.realtime_common import (
    close_clients,
    open_clients,
    raise_open_files,
    seed_groups,
    stack,
)
from relaybox.common.db.session import asyncpg_dsn
from relaybox.realtime.client import StreamClient

TARGET_P50_MS = 10.0
TARGET_P99_MS = 50.0
SENDERS = 10
ARRIVAL_TIMEOUT_S = 15.0
REPLICA = "bench-rt-0"  # the replica's name in the CPU figures (bench.realtime_common.stack)
BARE_SERVER = "bare server"
TEXT = "a message of about the usual size, twelve words or so in it"


@dataclass
class Load:
    """When each message was posted (by its number) and answered."""

    started: dict[int, float] = field(default_factory=dict)
    accepted_ms: dict[int, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    behind_ms: float = 0.0


@dataclass
class Arrivals:
    """Per message number, the arrival times on the recipients' sockets."""

    at: dict[int, list[float]] = field(default_factory=dict)

    def add(self, number: int, when: float) -> None:
        self.at.setdefault(number, []).append(when)


async def open_loop(
    count: int, rate: float, send: Callable[[int], Any], load: Load
) -> list[asyncio.Task[None]]:
    """Call `send(i)` at t0 + i/rate (open loop); the tasks it started."""
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic()
    for i in range(count):
        if (delay := start + i / rate - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        else:
            load.behind_ms = max(load.behind_ms, -delay * 1000)
        load.started[i] = time.monotonic()
        tasks.append(asyncio.create_task(send(i)))
    return tasks


# -- relaybox ---------------------------------------------------------------------------------


async def listen(client: StreamClient, me: str, arrivals: Arrivals) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        async for frame in client.events():
            if frame.get("type") != "message.created":
                continue
            now = time.monotonic()
            data = frame["data"]
            cmid = data.get("clientMessageId") or ""
            if data.get("senderId") != me and cmid.startswith("lat-"):
                arrivals.add(int(cmid[4:]), now)


@dataclass
class Side:
    """One side's latencies (ms) over the measured messages, and the frames that did not arrive."""

    name: str
    latencies: list[float] = field(default_factory=list)
    accepted_ms: list[float] = field(default_factory=list)
    after_202_ms: list[float] = field(default_factory=list)  # the 202 → each frame (< 0: before)
    not_arrived: int = 0
    behind_ms: float = 0.0
    cpu_ms_per_message: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def collect(
    side: Side, load: Load, arrivals: Arrivals, recipients: int, warmup: int, count: int
) -> None:
    for i in range(warmup, count):
        times = arrivals.at.get(i, [])
        side.not_arrived += recipients - len(times)
        side.latencies.extend((t - load.started[i]) * 1000 for t in times)
        if i in load.accepted_ms:
            side.accepted_ms.append(load.accepted_ms[i])
            answered = load.started[i] * 1000 + load.accepted_ms[i]
            side.after_202_ms.extend(t * 1000 - answered for t in times)
    side.behind_ms = load.behind_ms
    side.failed = load.failed


async def wait_all(arrivals: Arrivals, count: int, recipients: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(len(arrivals.at.get(i, ())) >= recipients for i in range(count)):
            return
        await asyncio.sleep(0.05)


async def relaybox_side(
    database_url: str,
    tag: str,
    members: int,
    rate: float,
    warmup_s: float,
    seconds: float,
    ack: bool,
    bare_url: str | None,
    bare_pid: int | None,
) -> tuple[Side, Side | None]:
    dsn = asyncpg_dsn(database_url)
    found = stack(database_url, tag, consumer=True)
    clients: list[StreamClient] = []
    listeners: list[asyncio.Task[None]] = []
    pools: dict[str, Pool] = {}
    try:
        found.start()
        users = [f"member{i:03d}" for i in range(members)]
        (conversation,) = await seed_groups(dsn, [users])
        await found.wait_ready(60)
        clients = await open_clients(found.stream_url(0), [token(u) for u in users], auto_ack=ack)
        arrivals = Arrivals()
        listeners = [
            asyncio.create_task(listen(c, u, arrivals)) for c, u in zip(clients, users, strict=True)
        ]
        bare = (
            await bare_side(bare_url, bare_pid, members, rate, warmup_s, seconds)
            if bare_url and bare_pid
            else None
        )
        senders = users[: min(SENDERS, members)]
        pools = {s: Pool("raw", found.api_url, token(s)) for s in senders}
        load = Load()

        async def post(i: int) -> None:
            sender = senders[i % len(senders)]
            body = {
                "conversationId": str(conversation),
                "text": TEXT,
                "clientMessageId": f"lat-{i}",
            }
            status, answer = await pools[sender].post_json(
                "/chat/messages", json.dumps(body).encode(), uuid.uuid4().hex
            )
            if status == 202:
                load.accepted_ms[i] = (time.monotonic() - load.started[i]) * 1000
            elif len(load.failed) < 3:
                load.failed.append(f"{status}: {str(answer)[:200]}")

        count = int((warmup_s + seconds) * rate)
        warmup = int(warmup_s * rate)
        pids = {s.name: s.pid for s in found.all}
        meter = CpuMeter(pids, database=make_url(database_url).database)
        started = False

        async def timed_post(i: int) -> None:
            nonlocal started
            if i == warmup and not started:
                started = True
                meter.start()
            await post(i)

        tasks = await open_loop(count, rate, timed_post, load)
        await asyncio.wait(tasks, timeout=ARRIVAL_TIMEOUT_S)
        await wait_all(arrivals, count, members - 1, ARRIVAL_TIMEOUT_S)
        used = meter.stop()
        found.check_alive()
        side = Side("relaybox")
        collect(side, load, arrivals, members - 1, warmup, count)
        side.cpu_ms_per_message = {k: v / (count - warmup) * 1000 for k, v in used.items()}
        return side, bare
    finally:
        for task in listeners:
            task.cancel()
        for pool in pools.values():
            await pool.close()
        await close_clients(clients)
        found.stop()
        with contextlib.suppress(Exception):
            await delete_topology(broker_settings(tag))


# -- the bare fan-out -------------------------------------------------------------------------


async def serve_bare(port: int) -> None:
    """Every frame a socket sends goes to every other socket."""
    sockets: set[ServerConnection] = set()

    async def handler(socket: ServerConnection) -> None:
        sockets.add(socket)
        try:
            async for frame in socket:
                for other in list(sockets):
                    if other is not socket:
                        with contextlib.suppress(Exception):
                            await other.send(frame)
        finally:
            sockets.discard(socket)

    async with serve(handler, "127.0.0.1", port, compression=None):
        print("ready", flush=True)
        await asyncio.Future()


async def bare_side(
    url: str, server_pid: int, members: int, rate: float, warmup_s: float, seconds: float
) -> Side:
    """The same frames through the bare fan-out: one socket sends, M - 1 receive; with the CPU
    per message of the bare server and of this process (its M sockets) after the warm-up."""
    arrivals = Arrivals()
    sample = json.dumps(
        {"type": "message.created", "eventId": 0, "cursor": "x" * 40, "data": {"text": TEXT}}
    )

    async def receive(socket: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            async for raw in socket:
                now = time.monotonic()
                arrivals.add(json.loads(raw)["n"], now)

    sockets = [await connect(url, compression=None) for _ in range(members)]
    readers = [asyncio.create_task(receive(s)) for s in sockets[1:]]
    try:
        load = Load()
        sender = sockets[0]
        count, warmup = int((warmup_s + seconds) * rate), int(warmup_s * rate)
        meter = CpuMeter({BARE_SERVER: server_pid})

        async def send(i: int) -> None:
            if i == warmup:
                meter.start()
            await sender.send(json.dumps({"n": i, "frame": sample}))

        await open_loop(count, rate, send, load)
        await wait_all(arrivals, count, members - 1, ARRIVAL_TIMEOUT_S)
        used = meter.stop()
        side = Side("bare websockets fan-out")
        collect(side, load, arrivals, members - 1, warmup, count)
        side.cpu_ms_per_message = {k: v / (count - warmup) * 1000 for k, v in used.items()}
        return side
    finally:
        for task in readers:
            task.cancel()
        for socket in sockets:
            await socket.close()


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    members: int
    rate: float
    seconds: float
    relaybox: Side
    bare: Side | None


async def measure(
    database_url: str,
    tag: str,
    members: int,
    rate: float,
    warmup_s: float,
    seconds: float,
    ack: bool,
) -> Outcome:
    raise_open_files(4 * members + 1000)
    port = free_port()
    bare = Service("bare", ["-m", "bench.realtime_latency", "--serve-bare", str(port)], {})
    bare.start()
    try:
        await asyncio.sleep(0.5)
        url = f"ws://127.0.0.1:{port}/"
        await _wait_listening(bare, url)
        relaybox, bare_found = await relaybox_side(
            database_url, tag, members, rate, warmup_s, seconds, ack, url, bare.pid
        )
    finally:
        bare.stop()
    return Outcome(members, rate, seconds, relaybox, bare_found)


async def _wait_listening(service: Service, url: str) -> None:
    for _ in range(100):
        with contextlib.suppress(OSError):
            socket = await connect(url)
            await socket.close()
            return
        if service.process is not None and service.process.poll() is not None:
            raise BenchError(f"the bare server exited:\n{service.output()}")
        await asyncio.sleep(0.1)
    raise BenchError(f"the bare server did not listen:\n{service.output()}")


def summarize(outcome: Outcome) -> Result:
    own, bare = outcome.relaybox, outcome.bare
    if not own.latencies:
        raise BenchError(f"no frame arrived; failed posts: {own.failed}")
    rows: list[list[Any]] = []
    for side in (own, bare):
        if side is None:
            continue
        values = side.latencies
        rows.append(
            [
                side.name,
                len(values),
                percentile(values, 50),
                percentile(values, 90),
                percentile(values, 99),
                max(values),
                side.not_arrived,
            ]
        )
    for name, values in (("(POST → 202)", own.accepted_ms), ("(202 → frame)", own.after_202_ms)):
        if values:
            rows.append(
                [
                    name,
                    len(values),
                    percentile(values, 50),
                    percentile(values, 90),
                    percentile(values, 99),
                    max(values),
                    "",
                ]
            )
    p50, p99 = percentile(own.latencies, 50), percentile(own.latencies, 99)
    metrics: dict[str, Any] = {
        "members": outcome.members,
        "rate_per_s": outcome.rate,
        "seconds": outcome.seconds,
        "frames": len(own.latencies),
        "p50_ms": round(p50, 2),
        "p90_ms": round(percentile(own.latencies, 90), 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(max(own.latencies), 2),
        "not_arrived": own.not_arrived,
        "post_failures": len(own.failed),
        "accepted_p50_ms": round(median(own.accepted_ms), 2) if own.accepted_ms else None,
        "accepted_p99_ms": round(percentile(own.accepted_ms, 99), 2) if own.accepted_ms else None,
        "after_202_p50_ms": round(median(own.after_202_ms), 2) if own.after_202_ms else None,
        "after_202_p99_ms": (
            round(percentile(own.after_202_ms, 99), 2) if own.after_202_ms else None
        ),
        "behind_ms": round(own.behind_ms, 1),
        "cpu_ms_per_message": {k: round(v, 3) for k, v in own.cpu_ms_per_message.items()},
    }
    if bare is not None and bare.latencies:
        bare_p50, bare_p99 = percentile(bare.latencies, 50), percentile(bare.latencies, 99)
        metrics.update(
            {
                "bare_p50_ms": round(bare_p50, 3),
                "bare_p99_ms": round(bare_p99, 3),
                "ratio_p50": round(p50 / bare_p50, 1),
                "ratio_p99": round(p99 / bare_p99, 1),
                "bare_cpu_ms_per_message": {
                    k: round(v, 3) for k, v in bare.cpu_ms_per_message.items()
                },
            }
        )
        replica = own.cpu_ms_per_message.get(REPLICA)
        bare_server = bare.cpu_ms_per_message.get(BARE_SERVER)
        if replica and bare_server:
            metrics["replica_cpu_ratio"] = round(replica / bare_server, 2)
    total = sum(v for k, v in own.cpu_ms_per_message.items())
    notes = [
        f"{outcome.members}-member group, {outcome.rate:g} messages/s for {outcome.seconds:g} s "
        f"(after the warm-up): POST → message.created on each of the {outcome.members - 1} "
        f"recipients' sockets; ratio = relaybox ÷ bare fan-out; not arrived: frames still "
        f"owed {ARRIVAL_TIMEOUT_S:g} s after the last post",
        "CPU ms per message: "
        + ", ".join(f"{k} {v:.2f}" for k, v in own.cpu_ms_per_message.items())
        + f" (total {total:.1f} ms: {total * outcome.rate / 1000:.2f} cores at this rate)",
    ]
    if bare is not None and bare.cpu_ms_per_message:
        notes.append(
            "bare fan-out CPU ms per message: "
            + ", ".join(f"{k} {v:.2f}" for k, v in bare.cpu_ms_per_message.items())
            + (
                f"; replica_cpu_ratio = {REPLICA} ÷ {BARE_SERVER}"
                if "replica_cpu_ratio" in metrics
                else ""
            )
        )
    if own.failed:
        notes.append(f"failed posts: {own.failed}")
    return Result(
        name="realtime_latency",
        columns=["side", "frames", "p50 ms", "p90 ms", "p99 ms", "max ms", "not arrived"],
        rows=rows,
        metrics=metrics,
        targets=[
            Target("p50_ms", "<", TARGET_P50_MS),
            Target("p99_ms", "<", TARGET_P99_MS),
            Target("not_arrived", "<", 1),
        ],
        notes=notes,
    )


def run(
    *,
    quick: bool = False,
    members: int | None = None,
    rate: float | None = None,
    seconds: float | None = None,
    ack: bool = False,
) -> Result:
    members = members or (20 if quick else 100)
    rate = rate or (10.0 if quick else 100.0)
    warmup_s = 1.0 if quick else 2.0
    seconds = seconds or (3.0 if quick else 15.0)
    tag = run_id()
    with bench_database(f"rtlat_{tag}") as database_url:
        work = measure(database_url, tag, members, rate, warmup_s, seconds, ack)
        outcome = asyncio.run(asyncio.wait_for(work, 300 + 3 * seconds))
    return summarize(outcome)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--serve-bare"]:
        serving = argparse.ArgumentParser()
        serving.add_argument("--serve-bare", type=int, required=True)
        asyncio.run(serve_bare(serving.parse_args(argv).serve_bare))
        return 0
    parser = base_parser(__doc__ or "")
    parser.add_argument("--members", type=int, default=None, help="default 100 (quick 20)")
    parser.add_argument("--rate", type=float, default=None, help="messages/s (default 100)")
    parser.add_argument("--seconds", type=float, default=None, help="measured (default 15)")
    parser.add_argument("--ack", action="store_true", help="the recipients acknowledge")
    args = parser.parse_args(argv)
    result = run(
        quick=args.quick, members=args.members, rate=args.rate, seconds=args.seconds, ack=args.ack
    )
    return finish(result, check=args.check)


if __name__ == "__main__":
    sys.exit(main())
