"""The faults of a chaos run, on a schedule: consumer and publisher kills (SIGKILL, then a
restart), RabbitMQ `stop_app`/`start_app`, a PostgreSQL restart, and the providers' 429 bursts
on top of their steady rate of 5xx answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import httpx

from tests.chaos.cluster import Cluster
from tests.chaos.ledger import Kill

log = logging.getLogger(__name__)

FaultKind = Literal["kill", "broker-restart", "database-restart", "429-burst"]
RESTART_AFTER_S = 1.0  # a supervisor's delay before it starts a killed replica again
BROKER_DOWN_S = 5.0
BURST_S = 2.0  # a 429 burst: every call answered 429 for this long (then the steady 5xx rate)
BURST_CALLS = 1_000_000
COMMAND_TIMEOUT_S = 120.0
SERVER_BACK_TIMEOUT_S = 120.0
RANDOM_5XX = (500, 502, 503, 504)


@dataclass(frozen=True)
class Fault:
    """One fault once `at` (a fraction) of the load has been submitted; `target` names a
    replica."""

    at: float
    kind: FaultKind
    target: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "kill":
            assert self.target is not None
            return f"kill -9 {self.target.split('-')[0]}"
        return _LABELS[self.kind]


_LABELS: dict[FaultKind, str] = {
    "broker-restart": "RabbitMQ stop_app/start_app",
    "database-restart": "PostgreSQL restart",
    "429-burst": f"{BURST_S:g} s of 429",
}


@dataclass(frozen=True)
class FaultRecord:
    """A fault as it happened (epoch seconds)."""

    fault: Fault
    started: float
    ended: float


def postgres_restart_command() -> list[str]:
    """`pg_ctlcluster --skip-systemctl-redirect <version> main restart` (Debian layout)."""
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*")) or ["15"]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"]


async def run_command(argv: list[str]) -> None:
    """Run an operator command; raise with its output when it fails."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {process.returncode}: {output.decode()}")


async def wait_port(url: str, default_port: int) -> None:
    """Wait until the server behind `url` accepts TCP connections again."""
    parsed = urlparse(url.replace("+asyncpg", ""))
    address = (parsed.hostname or "127.0.0.1", parsed.port or default_port)
    deadline = time.monotonic() + SERVER_BACK_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError), socket.create_connection(address, 2):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{address} did not come back")
        await asyncio.sleep(0.2)


class Providers:
    """The mock providers' failure switches (mock-meta's HTTP control routes)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def weather(self, failure_rate: float) -> None:
        """A steady `failure_rate` of retryable refusals: 5xx (SMTP: 451) from every provider."""
        await self._config("/smtp/config", {"failure": "transient", "failureRate": failure_rate})
        await self._config("/email-api/_mock/config", {"failureRate": failure_rate})
        await self._config(
            "/config", {"failureRate": failure_rate, "failureStatuses": list(RANDOM_5XX)}
        )

    async def burst_429(self, seconds: float) -> None:
        """Every provider answers 429 for `seconds` (SMTP has no 429: 451, try again later).

        Bounded in time, not in calls: a burst of N calls would outlive the load and be used up
        by the last few items' retries one by one."""
        await self._fail_next(BURST_CALLS)
        try:
            await asyncio.sleep(seconds)
        finally:
            await self._fail_next(0)

    async def _fail_next(self, calls: int) -> None:
        await self._config("/email-api/_mock/config", {"failNext": calls, "failStatus": 429})
        await self._config("/config", {"failNext": calls, "failStatus": 429})
        current = (await self._client.get("/smtp/config")).json()
        await self._config("/smtp/config", {**current, "failNext": calls})

    async def _config(self, path: str, body: dict[str, object]) -> None:
        response = await self._client.post(path, json=body)
        response.raise_for_status()


class FaultRunner:
    """Runs a schedule of faults one after the other and remembers when each happened."""

    def __init__(
        self,
        cluster: Cluster,
        providers: Providers,
        *,
        amqp_url: str,
        database_url: str,
        email_providers: dict[str, str],
    ) -> None:
        self._cluster = cluster
        self._providers = providers
        self._amqp_url = amqp_url
        self._database_url = database_url
        self._email_providers = email_providers  # consumer replica name -> its email provider
        self.records: list[FaultRecord] = []
        self.kills: list[Kill] = []

    async def run(self, schedule: list[Fault], reached: Callable[[float], Awaitable[None]]) -> None:
        """Each fault once the load `reached` its point, one after the other."""
        for fault in sorted(schedule, key=lambda f: f.at):
            await reached(fault.at)
            begun = time.time()
            log.warning("fault: %s", fault.label)
            await self._apply(fault)
            self.records.append(FaultRecord(fault, begun, time.time()))

    async def _apply(self, fault: Fault) -> None:
        if fault.kind == "kill":
            assert fault.target is not None
            await self._kill(fault.target)
        elif fault.kind == "broker-restart":
            await self._broker_restart()
        elif fault.kind == "database-restart":
            await run_command(postgres_restart_command())
            await wait_port(self._database_url, 5432)
        else:
            await self._providers.burst_429(BURST_S)

    async def _kill(self, name: str) -> None:
        moment = await self._cluster.kill(name)
        if name in self._email_providers:
            self.kills.append(Kill(moment, self._email_providers[name]))
        await asyncio.sleep(RESTART_AFTER_S)
        await self._cluster.restart(name)

    async def _broker_restart(self) -> None:
        await run_command(["rabbitmqctl", "stop_app"])
        try:
            await asyncio.sleep(BROKER_DOWN_S)
        finally:
            await run_command(["rabbitmqctl", "start_app"])
        await wait_port(self._amqp_url, 5672)

    def counts(self) -> dict[str, int]:
        """How many faults of each label happened."""
        found: dict[str, int] = {}
        for record in self.records:
            found[record.fault.label] = found.get(record.fault.label, 0) + 1
        return found


async def ensure_servers_up(amqp_url: str, database_url: str) -> None:
    """After a run that stopped them: start RabbitMQ's app and PostgreSQL if they are down."""
    with contextlib.suppress(RuntimeError, TimeoutError, OSError):
        await run_command(["rabbitmqctl", "start_app"])  # a no-op when it runs
    try:
        await wait_port(database_url, 5432)
    except RuntimeError:
        command = postgres_restart_command()
        await run_command([*command[:-1], "start"])
    await wait_port(amqp_url, 5672)
