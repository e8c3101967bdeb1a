"""Reconnect storm: N stream clients (default 5,000) all dropped at once reconnect and resume,
while messages keep being posted, with a ledger: per user, the events received equal the
events committed, with no gap and no duplicate.

Every service runs from its real entrypoint: the API, the publisher and the realtime replicas
(`python -m relaybox.realtime`). N users in groups of 50 (seeded directly), one
`relaybox.realtime.client.StreamClient` each (bearer subprotocol, auto-ack on, backoff with full
jitter capped at 5 s), all in this process. Posts go to the groups round-robin at `--rate`
messages/s from before the drop until after every client resumed; the recipients' acks make
`message.status` events for the senders, which are in the ledger too.

The drop (`--mode`):
- `failover` (default): two replicas; every client connects to the first (its URL list is
  [first, second]); the first gets SIGTERM and, after its grace period
  (`RELAYBOX_REALTIME__SHUTDOWN_GRACE_S`, 1 s here), closes every socket with 1012: all N
  reconnect to the second, a cold replica, at once.
- `restart`: one replica; SIGTERM, and once it exited a new process on the same port (the
  clients meet refused connections, then 503s while it starts, and back off).

Measured: from the first 1012 a client saw to the last client's `live` frame on its new socket
(the replay from its cursor is over): `resume_all_s`. The baseline, in the same run: the same N
clients' first connect (no cursor, no replay), at most 200 handshakes at once; the storm has no
such limit. After the posting stops and the acks' status events settle, each user's received
event ids (the client drops ids it already had; those count as duplicates here) are compared
with `chat_events` (the rows the user may see: `audience`, or for `message.created` the
sender and the copies' recipients).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import make_url

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
from bench.loadgen import Pool
from bench.realtime_common import (
    LedgerCheck,
    Stack,
    check_ledger,
    close_clients,
    committed_events,
    open_clients,
    raise_open_files,
    seed_groups,
    stack,
)
from relaybox.common.db.session import asyncpg_dsn
from relaybox.realtime.client import StreamClient

TARGET_RESUME_S = 10.0
GROUP_SIZE = 50
GRACE_S = 1.0
RESUME_TIMEOUT_S = 90.0
SETTLE_TIMEOUT_S = 60.0


@dataclass
class Tape:
    """What one user's client handed out: event ids in order, and when `live` frames came."""

    ids: list[int] = field(default_factory=list)
    lives: list[float] = field(default_factory=list)


async def record(client: StreamClient, tape: Tape) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        async for frame in client.events(control=True):
            event_id = frame.get("eventId")
            if isinstance(event_id, int):
                tape.ids.append(event_id)
            elif frame.get("type") == "live":
                tape.lives.append(time.monotonic())


@dataclass
class Posting:
    """Messages posted round-robin to the groups at a fixed rate (open loop)."""

    api_url: str
    groups: list[tuple[uuid.UUID, str]]  # (conversation, sender)
    rate: float
    accepted: int = 0
    failed: int = 0
    answers: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        pools = {sender: Pool("raw", self.api_url, token(sender)) for _, sender in self.groups}
        tasks: set[asyncio.Task[None]] = set()

        async def one(conversation: uuid.UUID, sender: str, n: int) -> None:
            body = {"conversationId": str(conversation), "text": f"storm {n}"}
            status, answer = await pools[sender].post_json(
                "/chat/messages", json.dumps(body).encode(), uuid.uuid4().hex
            )
            if status == 202:
                self.accepted += 1
            else:
                self.failed += 1
                if len(self.answers) < 3:
                    self.answers.append(f"{status}: {str(answer)[:200]}")

        start = time.monotonic()
        n = 0
        try:
            while not self._stop.is_set():
                due = start + n / self.rate
                if (delay := due - time.monotonic()) > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                    continue
                conversation, sender = self.groups[n % len(self.groups)]
                task = asyncio.create_task(one(conversation, sender, n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            if tasks:
                await asyncio.wait(tasks, timeout=30)
        finally:
            for pool in pools.values():
                await pool.close()

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Outcome:
    mode: str
    clients: int
    rate: float
    connect_all_s: float = 0.0
    resume_all_s: float = 0.0
    resume_s: list[float] = field(default_factory=list)  # per client: its drop → its live
    signal_to_close_s: float = 0.0
    failed_attempts: int = 0
    reconnects: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    posted: int = 0
    post_failures: int = 0
    ledger: LedgerCheck | None = None
    storm_cpu_s: dict[str, float] = field(default_factory=dict)
    settle_s: float = 0.0
    resumed: int = 0
    stuck: str = ""  # why not every client resumed in time


def users_and_groups(count: int) -> tuple[list[str], list[list[str]]]:
    users = [f"user{i:05d}" for i in range(count)]
    return users, [users[i : i + GROUP_SIZE] for i in range(0, count, GROUP_SIZE)]


async def measure(
    database_url: str,
    tag: str,
    count: int,
    rate: float,
    mode: str,
    pre_s: float,
    post_s: float,
    open_timeout_s: float,
) -> Outcome:
    raise_open_files(2 * count + 1000)
    outcome = Outcome(mode, count, rate)
    dsn = asyncpg_dsn(database_url)
    found = stack(
        database_url,
        tag,
        replicas=2 if mode == "failover" else 1,
        realtime_extra={"RELAYBOX_REALTIME__SHUTDOWN_GRACE_S": str(GRACE_S)},
    )
    clients: list[StreamClient] = []
    recorders: list[asyncio.Task[None]] = []
    posting: Posting | None = None
    poster: asyncio.Task[None] | None = None
    try:
        found.start()
        users, groups = users_and_groups(count)
        conversations = await seed_groups(dsn, groups)
        await found.wait_ready(60)
        urls = [found.stream_url(i) for i in range(len(found.realtime))]
        tokens = [token(user) for user in users]
        started = time.monotonic()
        clients = await open_clients(
            urls, tokens, auto_ack=True, max_backoff_s=5.0, open_timeout_s=open_timeout_s
        )
        tapes = [Tape() for _ in clients]
        recorders = [asyncio.create_task(record(c, t)) for c, t in zip(clients, tapes, strict=True)]
        await _until(lambda: all(t.lives for t in tapes), 60, "every client live")
        outcome.connect_all_s = time.monotonic() - started

        posting = Posting(
            found.api_url, [(c, g[0]) for c, g in zip(conversations, groups, strict=True)], rate
        )
        if rate > 0:
            poster = asyncio.create_task(posting.run())
        await asyncio.sleep(pre_s)
        found.check_alive()
        await _drop(found, outcome, clients, tapes, mode)
        await asyncio.sleep(post_s)
        posting.stop()
        if poster is not None:
            await poster
        outcome.posted, outcome.post_failures = posting.accepted, posting.failed
        if posting.failed:
            print(f"note: {posting.failed} posts failed: {posting.answers}", file=sys.stderr)
        outcome.ledger, outcome.settle_s = await _settle(dsn, users, tapes, clients)
        outcome.failed_attempts = sum(c.stats.failed_attempts for c in clients)
        outcome.reconnects = sum(c.stats.reconnects for c in clients)
        codes: dict[str, int] = {}
        for client in clients:
            for code, n in client.stats.close_codes.items():
                codes[str(code)] = codes.get(str(code), 0) + n
        outcome.close_codes = codes
    finally:
        if posting is not None:
            posting.stop()
        if poster is not None and not poster.done():
            poster.cancel()
        for task in recorders:
            task.cancel()
        await close_clients(clients)
        found.stop()
        with contextlib.suppress(Exception):
            await delete_topology(broker_settings(tag))
    return outcome


async def _until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


async def _drop(
    found: Stack, outcome: Outcome, clients: list[StreamClient], tapes: list[Tape], mode: str
) -> None:
    """SIGTERM the (first) replica; wait until every client resumed on its new socket."""
    replica = found.realtime[0]
    pids = {s.name: s.pid for s in found.services}
    if mode == "failover":
        pids["realtime (new)"] = found.realtime[1].pid
    database = make_url(found.database_url).database
    meter = CpuMeter(pids, database=database)
    meter.start()
    signalled = time.monotonic()
    assert replica.process is not None
    replica.process.send_signal(signal.SIGTERM)
    if mode == "restart":
        await asyncio.to_thread(replica.process.wait, 30)
        replica.stop()
        found.restart_realtime(0)
        meter = CpuMeter({**pids, "realtime (new)": found.realtime[0].pid}, database=database)
        meter.start()

    def resumed(client: StreamClient, tape: Tape) -> bool:
        gone = client.stats.disconnected_at
        return gone is not None and bool(tape.lives) and tape.lives[-1] > gone

    pairs = list(zip(clients, tapes, strict=True))
    try:
        await _until(
            lambda: all(resumed(c, t) for c, t in pairs), RESUME_TIMEOUT_S, "every client resumed"
        )
    except BenchError as exc:  # reported as a miss (and the ledger shows what it cost)
        outcome.stuck = f"{exc}: {_where(pairs, resumed)}"
    outcome.storm_cpu_s = meter.stop()
    first_drop = min(c.stats.disconnected_at or signalled for c in clients)
    outcome.signal_to_close_s = first_drop - signalled
    back = [(c, t) for c, t in pairs if resumed(c, t)]
    outcome.resumed = len(back)
    outcome.resume_s = [t.lives[-1] - (c.stats.disconnected_at or first_drop) for c, t in back]
    if outcome.resumed < len(pairs):
        outcome.resume_all_s = time.monotonic() - first_drop  # at least
    else:
        outcome.resume_all_s = max(t.lives[-1] for t in tapes) - first_drop


def _where(pairs: list[tuple[StreamClient, Tape]], resumed: Any) -> str:
    """How far the clients got (when some did not resume)."""
    codes: dict[str, int] = {}
    for client, _ in pairs:
        for code, n in client.stats.close_codes.items():
            codes[str(code)] = codes.get(str(code), 0) + n
    return (
        f"{sum(resumed(c, t) for c, t in pairs)} of {len(pairs)} resumed, "
        f"{sum(c.connected for c, _ in pairs)} connected, "
        f"{sum(c.stats.disconnects == 0 for c, _ in pairs)} never dropped, "
        f"{sum(c.stats.failed_attempts for c, _ in pairs)} failed attempts "
        f"({sum((c.stats.failures for c, _ in pairs), Counter())}), close codes {codes}"
    )


async def _settle(
    dsn: str, users: list[str], tapes: list[Tape], clients: list[StreamClient]
) -> tuple[LedgerCheck, float]:
    """Wait until every user has every committed event (or the limit), then check the ledger."""
    started = time.monotonic()
    deadline = started + SETTLE_TIMEOUT_S
    while True:
        committed = await committed_events(dsn, users)
        received = {u: t.ids for u, t in zip(users, tapes, strict=True)}
        dropped = {u: c.stats.duplicates for u, c in zip(users, clients, strict=True)}
        check = check_ledger(committed, received, dropped)
        if check.ok or time.monotonic() > deadline:
            return check, time.monotonic() - started
        await asyncio.sleep(1.0)


def summarize(outcome: Outcome) -> Result:
    ledger = outcome.ledger
    assert ledger is not None
    resume = sorted(outcome.resume_s) or [float("nan")]
    rows: list[list[Any]] = [
        ["first connect (baseline)", outcome.clients, outcome.connect_all_s, "-", "-"],
        [
            f"storm: 1012 → all live ({outcome.mode})",
            outcome.clients,
            outcome.resume_all_s,
            median(resume),
            percentile(resume, 99),
        ],
    ]
    metrics: dict[str, Any] = {
        "mode": outcome.mode,
        "clients": outcome.clients,
        "rate_per_s": outcome.rate,
        "resumed": outcome.resumed,
        "resume_all_s": round(outcome.resume_all_s, 2),
        "resume_p50_s": round(median(resume), 2),
        "resume_p99_s": round(percentile(resume, 99), 2),
        "connect_all_s": round(outcome.connect_all_s, 2),
        "ratio": round(outcome.resume_all_s / outcome.connect_all_s, 2),
        "sigterm_to_first_close_s": round(outcome.signal_to_close_s, 2),
        "failed_attempts": outcome.failed_attempts,
        "reconnects": outcome.reconnects,
        "close_codes": outcome.close_codes,
        "posted": outcome.posted,
        "post_failures": outcome.post_failures,
        "events_committed": ledger.committed,
        "events_received": ledger.received,
        "missing": ledger.missing,
        "unexpected": ledger.unexpected,
        "duplicates": ledger.duplicates,
        "users_short": ledger.users_short,
        "settle_s": round(outcome.settle_s, 1),
        "storm_cpu_s": {k: round(v, 2) for k, v in outcome.storm_cpu_s.items()},
    }
    notes = [
        f"{outcome.clients:,} clients in groups of {GROUP_SIZE}, {outcome.posted:,} messages "
        f"posted at {outcome.rate:g}/s around the drop ({outcome.post_failures} failed); "
        f"SIGTERM → first 1012 {outcome.signal_to_close_s:.2f} s (grace {GRACE_S:g} s)",
        f"ledger: {ledger.committed:,} events committed for {ledger.users:,} users, "
        f"{ledger.received:,} received; missing {ledger.missing}, unexpected "
        f"{ledger.unexpected}, duplicates {ledger.duplicates} (settled in "
        f"{outcome.settle_s:.1f} s after the posting stopped)",
        f"clients: {outcome.reconnects:,} reconnects, {outcome.failed_attempts:,} failed "
        f"attempts (503 while starting, refused), close codes {outcome.close_codes}; CPU "
        "seconds during the storm: "
        + ", ".join(f"{k} {v:.1f}" for k, v in outcome.storm_cpu_s.items()),
        "ratio = storm (1012 → every client live again) ÷ the same clients' first connect",
        *ledger.examples,
    ]
    if outcome.stuck:
        notes.insert(0, f"NOT ALL RESUMED: {outcome.stuck}")
    return Result(
        name="realtime_storm",
        columns=["phase", "clients", "all (s)", "p50 (s)", "p99 (s)"],
        rows=rows,
        metrics=metrics,
        targets=[
            Target("resume_all_s", "<", TARGET_RESUME_S),
            Target("resumed", ">=", outcome.clients),
            Target("missing", "<", 1),
            Target("duplicates", "<", 1),
            Target("unexpected", "<", 1),
        ],
        notes=notes,
    )


def run(
    *,
    quick: bool = False,
    clients: int | None = None,
    rate: float | None = None,
    mode: str = "failover",
    open_timeout_s: float = 10.0,
) -> Result:
    count = clients or (300 if quick else 5_000)
    rate = (10.0 if quick else 20.0) if rate is None else rate
    pre_s, post_s = (1.0, 1.0) if quick else (3.0, 3.0)
    tag = run_id()
    with bench_database(f"rtstorm_{tag}") as database_url:
        work = measure(database_url, tag, count, rate, mode, pre_s, post_s, open_timeout_s)
        outcome = asyncio.run(asyncio.wait_for(work, 600 + count / 20))
    return summarize(outcome)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--clients", type=int, default=None, help="default 5,000 (quick 300)")
    parser.add_argument(
        "--rate", type=float, default=None, help="messages/s posted (default 20, quick 10; 0: none)"
    )
    parser.add_argument("--mode", choices=["failover", "restart"], default="failover")
    parser.add_argument(
        "--open-timeout", type=float, default=10.0, help="the clients' handshake timeout (s)"
    )
    args = parser.parse_args(argv)
    return finish(
        run(
            quick=args.quick,
            clients=args.clients,
            rate=args.rate,
            mode=args.mode,
            open_timeout_s=args.open_timeout,
        ),
        check=args.check,
    )


if __name__ == "__main__":
    sys.exit(main())
