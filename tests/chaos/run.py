"""One chaos run end to end: a fresh database and topology, the real service processes, the
load, the faults, then the ledger from the providers' side. `python -m tests.chaos` runs it.

The plan names what is submitted and which faults happen when; `FULL` is what `make chaos`
runs (10,000 items, broker and database restarts included), `SMOKE` the ~60 s run of the test
suite (process kills and provider faults only: CI shares its servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import aio_pika
import asyncpg
import httpx
from sqlalchemy.engine import make_url

from relaybox.api.auth import issue_token
from relaybox.api.settings import ApiSettings, AuthSettings
from relaybox.common.db.migrate import upgrade
from relaybox.common.db.session import asyncpg_dsn
from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings
from tests.chaos.cluster import Cluster
from tests.chaos.faults import Fault, FaultRunner, Providers, ensure_servers_up
from tests.chaos.leaks import find_leaks
from tests.chaos.ledger import Ledger, details, tally_items
from tests.chaos.records import (
    ProviderSide,
    Rows,
    all_terminal,
    inbound_tally,
    outstanding,
    read_provider_side,
    read_rows,
    token_findings,
)
from tests.chaos.workload import (
    Counts,
    InboundPlan,
    Pacer,
    Submitter,
    jobs,
    now_utc,
    plan_inbound,
)
from tests.support.databases import drop_database_async
from tests.support.servers import Servers
from tests.support.serving import free_port

log = logging.getLogger("chaos")

SERVER_FAULTS = frozenset({"broker-restart", "database-restart"})
CONSUMERS = {"consumer-smtp": "smtp", "consumer-api": "http-api"}
LEDGER_PROVIDER = {"smtp": "smtp", "http-api": "email-api"}


@dataclass(frozen=True)
class Plan:
    """What a run submits, the faults it injects and the settings it runs the services with."""

    mode: str
    counts: Counts
    rate: float  # requests per second at most
    max_backlog: int  # items accepted by relaybox and not yet terminal, at most
    faults: tuple[Fault, ...]
    failure_rate: float = 0.3  # every provider's steady share of 5xx (SMTP: 451)
    lease_s: float = 10.0
    prefetch: int = 32
    max_attempts: int = 25  # 0.3^25: no item runs out of attempts by bad luck
    retry_delays_ms: tuple[int, ...] = (250, 1000, 3000)
    email_api_rate: float = 200.0  # the email API's limit (mock) and relaybox's global rate
    meta_rate: float = 200.0
    watch_s: float = 240.0  # how long after the last fault to wait for every item

    @property
    def restarts_servers(self) -> bool:
        return any(f.kind in SERVER_FAULTS for f in self.faults)


FULL = Plan(
    mode="full",
    counts=Counts(emails=3000, mailing_rows=3000, meta_sends=2000, inbound=2000),
    rate=150.0,
    max_backlog=400,
    faults=(
        Fault(0.05, "429-burst"),
        Fault(0.10, "kill", "consumer-smtp"),
        Fault(0.18, "kill", "publisher"),
        Fault(0.26, "broker-restart"),
        Fault(0.38, "kill", "consumer-api"),
        Fault(0.45, "429-burst"),
        Fault(0.52, "database-restart"),
        Fault(0.62, "kill", "publisher"),
        Fault(0.70, "broker-restart"),
        Fault(0.82, "kill", "consumer-smtp"),
        Fault(0.90, "429-burst"),
    ),
)
SMOKE = Plan(
    mode="smoke",
    counts=Counts(emails=150, mailing_rows=100, meta_sends=100, inbound=100),
    rate=30.0,
    max_backlog=150,
    faults=(
        Fault(0.1, "429-burst"),
        Fault(0.2, "kill", "consumer-smtp"),
        Fault(0.45, "kill", "publisher"),
        Fault(0.65, "kill", "consumer-api"),
        Fault(0.85, "429-burst"),
    ),
)


@dataclass(frozen=True)
class Secrets:
    """Everything secret the run hands out; the logs are grepped for each."""

    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    webhook_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    email_api_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))

    def bearer(self) -> str:
        settings = ApiSettings(auth=AuthSettings(jwt_secret=self.jwt_secret))
        return issue_token(settings, "chaos")


@dataclass(frozen=True)
class Ports:
    mock: int = field(default_factory=free_port)
    smtp: int = field(default_factory=free_port)
    api: int = field(default_factory=free_port)
    publisher: int = field(default_factory=free_port)
    consumers: tuple[int, ...] = field(default_factory=lambda: (free_port(), free_port()))

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"


@dataclass
class Setup:
    """The run's database, topology, secrets and ports."""

    plan: Plan
    database_url: str
    broker: BrokerSettings
    keys: Secrets = field(default_factory=Secrets)
    ports: Ports = field(default_factory=Ports)

    @property
    def dsn(self) -> str:
        return asyncpg_dsn(self.database_url)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
        env.update(
            {
                "RELAYBOX_DATABASE__URL": self.database_url,
                "RELAYBOX_BROKER__URL": self.broker.url,
                "RELAYBOX_BROKER__TOPOLOGY_PREFIX": self.broker.topology_prefix,
                "RELAYBOX_BROKER__RETRY_DELAYS_MS": json.dumps(self.broker.retry_delays_ms),
                "RELAYBOX_LOG__LEVEL": "INFO",
                # 4 processes x (SQLAlchemy pool + asyncpg pool) stay well under PostgreSQL's
                # default 100 connections, which the test suites running beside share
                "RELAYBOX_DATABASE__POOL_SIZE": "4",
                "RELAYBOX_DATABASE__MAX_OVERFLOW": "4",
            }
        )
        env.update(extra)
        return env


def mock_env(setup: Setup, seed: int) -> dict[str, str]:
    ports, rate = setup.ports, setup.plan.email_api_rate
    return setup.env(
        RELAYBOX_MOCK_META__PORT=str(ports.mock),
        RELAYBOX_SMTP_SINK__PORT=str(ports.smtp),
        RELAYBOX_SMTP_SINK__MAX_MESSAGES="200000",
        RELAYBOX_EMAIL_API__PASSWORD=setup.keys.email_api_password,
        RELAYBOX_EMAIL_API__RATE_LIMIT_PER_WINDOW=str(int(rate)),
        RELAYBOX_EMAIL_API__RATE_WINDOW_S="1",
        RELAYBOX_EMAIL_API__MAX_MESSAGES="200000",
        RELAYBOX_META__WEBHOOK_URL=f"{ports.url(ports.api)}/webhooks/mock-meta",
        RELAYBOX_META__WEBHOOK_SECRET=setup.keys.webhook_secret,
        RELAYBOX_META__STATUS_EVENTS="false",
        RELAYBOX_META__MAX_MESSAGES="200000",
        RELAYBOX_META__SEED=str(seed),
    )


def api_env(setup: Setup) -> dict[str, str]:
    return setup.env(
        RELAYBOX_API__PORT=str(setup.ports.api),
        RELAYBOX_AUTH__JWT_SECRET=setup.keys.jwt_secret,
        RELAYBOX_META__WEBHOOK_SECRET=setup.keys.webhook_secret,
        RELAYBOX_RATE_LIMIT__SEND_PER_MINUTE="1000000",
        RELAYBOX_MAILINGS__PROVIDER_RATE_PER_SECOND=str(setup.plan.email_api_rate),
    )


def consumer_env(setup: Setup, provider: str, port: int) -> dict[str, str]:
    plan, ports = setup.plan, setup.ports
    return setup.env(
        RELAYBOX_CONSUMER__PORT=str(port),
        RELAYBOX_EMAIL_PROVIDER=provider,
        RELAYBOX_SMTP__PORT=str(ports.smtp),
        RELAYBOX_EMAIL_API__BASE_URL=f"{ports.url(ports.mock)}/email-api",
        RELAYBOX_EMAIL_API__PASSWORD=setup.keys.email_api_password,
        RELAYBOX_EMAIL_API__RATE_PER_SECOND=str(plan.email_api_rate),
        RELAYBOX_META__BASE_URL=ports.url(ports.mock),
        RELAYBOX_META__RATE_PER_SECOND=str(plan.meta_rate),
        RELAYBOX_LEASE_S=str(plan.lease_s),
        RELAYBOX_PREFETCH=str(plan.prefetch),
        RELAYBOX_MAX_ATTEMPTS=str(plan.max_attempts),
    )


async def start_services(cluster: Cluster, setup: Setup, seed: int) -> None:
    """mock-meta (the providers), the API, the publisher and both consumers, all at once."""
    ports = setup.ports
    replicas = [
        ("mock-meta", "relaybox.mock_meta", mock_env(setup, seed), ports.mock),
        ("api", "relaybox.api", api_env(setup), ports.api),
        (
            "publisher",
            "relaybox.publisher",
            setup.env(RELAYBOX_PUBLISHER__PORT=str(ports.publisher)),
            ports.publisher,
        ),
    ]
    for (name, provider), port in zip(CONSUMERS.items(), ports.consumers, strict=True):
        replicas.append((name, "relaybox.consumer", consumer_env(setup, provider, port), port))
    started = time.monotonic()
    await asyncio.gather(
        *(
            cluster.add(name, module, env, f"{ports.url(port)}/health")
            for name, module, env, port in replicas
        )
    )
    log.warning("%d services up in %.1f s", len(replicas), time.monotonic() - started)


async def wait_terminal(setup: Setup, deadline: float) -> tuple[float | None, dict[str, int]]:
    """Poll the database until every item is terminal: the moment (None at the deadline), and
    the last counts seen."""
    counts = setup.plan.counts
    emails = counts.emails + counts.mailing_rows
    seen: dict[str, int] = {}
    while time.time() < deadline:
        try:
            seen = await outstanding(setup.dsn)
        except (OSError, asyncpg.PostgresError, TimeoutError):
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
            with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
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
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    return Phase(submitter, runner, inbound, t0, last_fault, terminal, seen, pacer.failures)


def _fill(ledger: Ledger, plan: Plan, phase: Phase, side: ProviderSide, rows: Rows) -> None:
    """Tally the items, the inbound messages, the timing and whatever went wrong."""
    ledger.timing.last_fault_s = phase.last_fault - phase.started
    ledger.timing.terminal_s = None if phase.terminal is None else phase.terminal - phase.started
    ledger.timing.duration_s = time.time() - phase.started
    ledger.faults = phase.runner.counts()
    ledger.faults[f"provider 5xx {plan.failure_rate:.0%}"] = 1
    tally_items(ledger, rows.items, side.accepted, side.calls, phase.runner.kills)
    submitted = phase.submitter.result
    ledger.inbound = inbound_tally(phase.inbound, submitted, rows)
    known = {item.key for item in rows.items}
    ledger.stray_keys = sum(1 for key in side.calls if key not in known)
    ledger.problems += submitted.errors[:5] + phase.failures[:5]
    if phase.terminal is None:
        ledger.problems.append(f"at the deadline the database still counted {phase.outstanding}")
    if side.unkeyed_calls:
        ledger.problems.append(f"{side.unkeyed_calls} provider calls carried no item key")
    ledger.findings += token_findings(side.tokens, rows.token_hashes)
