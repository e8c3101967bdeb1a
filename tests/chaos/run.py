"""One chaos run end to end: a fresh database and topology, the real service processes, the
load and the faults at once, then the ledger from the providers' side (`python -m tests.chaos`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import aio_pika
import asyncpg
import httpx
from sqlalchemy.engine import make_url

from relaybox.common.db.migrate import upgrade
from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings
from tests.chaos.cluster import Cluster
from tests.chaos.faults import FaultRunner, Providers, ensure_servers_up
from tests.chaos.leaks import find_leaks
from tests.chaos.ledger import Ledger, tally_items
from tests.chaos.plans import Plan
from tests.chaos.records import (
    ProviderSide,
    Rows,
    all_terminal,
    inbound_tally,
    outstanding,
    queued,
    read_provider_side,
    read_rows,
    token_findings,
)
from tests.chaos.report import details
from tests.chaos.setup import CONSUMERS, LEDGER_PROVIDER, Setup, start_services
from tests.chaos.workload import (
    InboundPlan,
    Pacer,
    Submitter,
    jobs,
    now_utc,
    plan_inbound,
)
from tests.support.databases import drop_database_async
from tests.support.servers import Servers

log = logging.getLogger("chaos")

# what polling the database raises while PostgreSQL restarts
DATABASE_DOWN = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def wait_terminal(setup: Setup, deadline: float) -> tuple[float | None, dict[str, int]]:
    """Poll the database until every item is terminal: the moment (None at the deadline), and
    the last counts seen."""
    counts = setup.plan.counts
    emails = counts.emails + counts.mailing_rows
    seen: dict[str, int] = {}
    while time.time() < deadline:
        try:
            seen = await outstanding(setup.dsn)
        except DATABASE_DOWN:
            seen = {}  # the database is restarting
        if seen and all_terminal(seen, emails, counts.inbound):
            return time.time(), seen
        await asyncio.sleep(0.5)
    return None, seen


class Backlog:
    """Items relaybox accepted and has not finished (emails and Meta sends), polled."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.value = 0

    def __call__(self) -> int:
        return self.value

    async def watch(self) -> None:
        """Refresh twice a second until cancelled (the last value stays through an outage)."""
        while True:
            with contextlib.suppress(*DATABASE_DOWN):
                counts = await outstanding(self._dsn)
                self.value = counts["emails_open"] + counts["meta_open"]
            await asyncio.sleep(0.5)


async def _supervise(cluster: Cluster, ledger: Ledger) -> None:
    while True:
        await asyncio.sleep(1.0)
        for name in await cluster.supervise():
            ledger.problems.append(f"{name} exited on its own (restarted)")


@contextlib.asynccontextmanager
async def run_resources(
    plan: Plan, servers: Servers, tag: str, *, keep: bool = False
) -> AsyncIterator[tuple[str, BrokerSettings]]:
    """The run's own database (migrated) and topology prefix; both removed at the end unless
    `keep`, and RabbitMQ and PostgreSQL started again if a restart left them down."""
    url = make_url(servers.database_admin_url).set(database=f"relaybox_chaos_{tag}")
    database_url = url.render_as_string(hide_password=False)
    broker = BrokerSettings(
        url=servers.amqp_url,
        topology_prefix=f"chaos.{tag}.",
        retry_delays_ms=list(plan.retry_delays_ms),
    )
    await asyncio.to_thread(upgrade, database_url)
    try:
        yield database_url, broker
    finally:
        if plan.restarts_servers:
            await ensure_servers_up(servers.amqp_url, database_url)
        if keep:
            log.warning("kept database %s and topology prefix %s", url.database, tag)
        else:
            await drop_database_async(database_url)
            await _delete_topology(broker)


async def _delete_topology(broker: BrokerSettings) -> None:
    with contextlib.suppress(aio_pika.exceptions.AMQPError, OSError):
        connection = await aio_pika.connect(broker.url, timeout=10)
        async with connection:
            await Topology.from_settings(broker).delete(await connection.channel())


async def run(
    plan: Plan, servers: Servers, log_dir: Path, seed: int | None = None, *, keep: bool = False
) -> Ledger:
    """Run the plan; the ledger says what happened (`ledger.ok` is the verdict). The service
    logs and `ledger.json` (every finding, fault and kill) stay in `log_dir`; `keep` keeps the
    database and the topology too, for a closer look."""
    seed = seed if seed is not None else random.randrange(1 << 30)
    log.warning("chaos %s run, seed %s, logs in %s", plan.mode, seed, log_dir)
    ledger = Ledger(plan.mode, seed, plan.prefetch, crash_window_s=plan.lease_s)
    tag = uuid.uuid4().hex[:8]
    async with run_resources(plan, servers, tag, keep=keep) as (database_url, broker):
        setup = Setup(plan, database_url, broker)
        cluster = Cluster(log_dir)
        try:
            tokens = await _drive(setup, cluster, ledger, random.Random(seed))
        finally:
            await cluster.stop()
        ledger.leaks = find_leaks(cluster.log_files(), _named_secrets(setup), tokens)
    (log_dir / "ledger.json").write_text(json.dumps(details(ledger), indent=1))
    return ledger


def _named_secrets(setup: Setup) -> dict[str, str]:
    named = {
        "JWT secret": setup.keys.jwt_secret,
        "bearer token": setup.keys.bearer(),
        "webhook secret": setup.keys.webhook_secret,
        "email API password": setup.keys.email_api_password,
    }
    password = urlparse(setup.broker.url).password
    if password:
        named["broker password"] = f":{password}@"
    return named


@dataclass
class Phase:
    """The load-and-faults phase as it went: what was submitted, the faults, the moments."""

    submitter: Submitter
    runner: FaultRunner
    inbound: InboundPlan
    started: float  # epoch seconds
    last_fault: float
    terminal: float | None
    outstanding: dict[str, int]
    failures: list[str]


async def _drive(setup: Setup, cluster: Cluster, ledger: Ledger, rng: random.Random) -> list[str]:
    """Start the services, run the phase, stop them, fill the ledger; the recipients' tokens."""
    ports = setup.ports
    cpu_before = time.process_time()
    headers = {"Authorization": f"Bearer {setup.keys.bearer()}"}
    async with (
        httpx.AsyncClient(base_url=ports.url(ports.mock), timeout=60) as mock,
        httpx.AsyncClient(base_url=ports.url(ports.api), headers=headers, timeout=30) as api,
    ):
        await start_services(cluster, setup, ledger.seed)
        providers = Providers(mock)
        await providers.weather(setup.plan.failure_rate)
        phase = await _phase(
            setup, cluster, ledger, providers, Submitter(api, setup.keys.webhook_secret), rng
        )
        await cluster.stop([name for name in cluster.services if name != "mock-meta"])
        side = await read_provider_side(mock)
        await cluster.stop(["mock-meta"])
        ledger.cpu_s = {**cluster.cpu(), "harness": round(time.process_time() - cpu_before, 1)}
    rows = await read_rows(setup.dsn, phase.submitter.result)
    _fill(ledger, setup.plan, phase, side, rows)
    ledger.events = [
        f"{r.fault.label} {r.fault.target or ''} {r.started:.3f}-{r.ended:.3f}".replace("  ", " ")
        for r in phase.runner.records
    ]
    return side.all_tokens()


async def _phase(
    setup: Setup,
    cluster: Cluster,
    ledger: Ledger,
    providers: Providers,
    submitter: Submitter,
    rng: random.Random,
) -> Phase:
    """The load and the faults at once, then the wait for every item to be terminal."""
    plan = setup.plan
    runner = FaultRunner(
        cluster,
        providers,
        amqp_url=setup.broker.url,
        database_url=setup.database_url,
        email_providers={n: LEDGER_PROVIDER[p] for n, p in CONSUMERS.items()},
    )
    inbound = plan_inbound(plan.counts.inbound, rng, now_utc())
    work = jobs(submitter, plan.counts, inbound, rng)
    backlog = Backlog(setup.dsn)
    pacer = Pacer(plan.rate, plan.max_backlog, backlog)
    t0 = time.time()
    helpers = [
        asyncio.create_task(_supervise(cluster, ledger)),
        asyncio.create_task(backlog.watch()),
    ]
    try:
        await asyncio.gather(pacer.run(work), runner.run(list(plan.faults), pacer.reached))
        last_fault = max((r.ended for r in runner.records), default=time.time())
        log.warning("load and faults done; waiting for every item to be terminal")
        terminal, seen = await wait_terminal(setup, last_fault + plan.watch_s)
        if terminal is None:
            seen["queued"] = await queued(setup.broker)
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    return Phase(submitter, runner, inbound, t0, last_fault, terminal, seen, pacer.failures)


def _stalled(seen: dict[str, int]) -> str:
    """What the run found when it gave up waiting: where the unfinished items stand."""
    left = {k: v for k, v in seen.items() if k.endswith("_open") and v}
    story = f"at the deadline {left} were not finished"
    if not seen.get("outbox") and not seen.get("queued"):
        story += (
            ", with no message left for them (outbox and queues empty): they wait for the "
            "sweeper, which re-enqueues a PENDING row after RELAYBOX_STALE_PENDING_S (900 s)"
        )
    else:
        story += f", with {seen.get('outbox')} outbox rows and {seen.get('queued')} queued messages"
    return story


def _fill(ledger: Ledger, plan: Plan, phase: Phase, side: ProviderSide, rows: Rows) -> None:
    """Tally the items, the inbound messages, the timing and whatever went wrong."""
    ledger.timing.last_fault_s = phase.last_fault - phase.started
    ledger.timing.terminal_s = None if phase.terminal is None else phase.terminal - phase.started
    ledger.timing.duration_s = time.time() - phase.started
    ledger.faults = phase.runner.counts()
    ledger.failure_rate = plan.failure_rate
    tally_items(ledger, rows.items, side.accepted, side.calls, phase.runner.kills)
    submitted = phase.submitter.result
    ledger.inbound = inbound_tally(phase.inbound, submitted, rows)
    known = {item.key for item in rows.items}
    ledger.stray_keys = sum(1 for key in side.calls if key not in known)
    ledger.problems += submitted.errors[:5] + phase.failures[:5]
    if phase.terminal is None:
        ledger.problems.append(_stalled(phase.outstanding))
    if side.unkeyed_calls:
        ledger.problems.append(f"{side.unkeyed_calls} provider calls carried no item key")
    ledger.findings += token_findings(side.tokens, rows.token_hashes)
