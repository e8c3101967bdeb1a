"""Shared plumbing of the benchmarks: throwaway databases and topologies, servers, reporting."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import httpx
from tests.support.broker import delete_topology as delete_topology
from tests.support.databases import migrated_database
from tests.support.databases import truncate as truncate_tables
from tests.support.processes import cpu_seconds as cpu_seconds
from tests.support.processes import die_with_parent
from tests.support.serving import free_port as free_port
from tests.support.serving import free_ports as free_ports

from relaybox.common.db.session import asyncpg_dsn
from relaybox.common.settings import BrokerSettings

ADMIN_DB_URL = os.environ.get(
    "RELAYBOX_BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("RELAYBOX_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
JWT_SECRET = "bench-secret-that-is-long-enough-for-hs256-signing"
# Outside dev mode the API refuses the development webhook signing secret.
WEBHOOK_SECRET = "bench-webhook-signing-secret"
REPO_ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A benchmark could not run (server unreachable, a service did not start, lost messages)."""


def run_id() -> str:
    return uuid.uuid4().hex[:8]


# -- PostgreSQL -------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_database(tag: str) -> Iterator[str]:
    """A fresh `relaybox_bench_<random>` database migrated to head; dropped on exit."""
    with migrated_database(ADMIN_DB_URL, f"relaybox_bench_{tag}") as url:
        yield url


async def truncate(url: str) -> None:
    """Empty every table (each phase starts from the same table sizes)."""
    await truncate_tables(url)
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


# -- RabbitMQ ---------------------------------------------------------------------------------


def broker_settings(tag: str) -> BrokerSettings:
    """The run's own topology prefix on the benchmark broker."""
    return BrokerSettings(url=AMQP_URL, topology_prefix=f"bench.{tag}.")


# -- processes and servers --------------------------------------------------------------------


def postgres_backends(database: str) -> dict[int, float]:
    """CPU seconds of every PostgreSQL backend connected to `database` (Linux /proc)."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"postgres:") and f" {database} ".encode() in cmdline:
            seconds = cpu_seconds(int(entry.name))
            if seconds is not None:
                found[int(entry.name)] = seconds
    return found


class CpuMeter:
    """CPU seconds used between `start()` and `stop()` by named processes, this process and a
    database's PostgreSQL backends."""

    SELF = "bench (this process)"
    BACKENDS = "postgres backends"

    def __init__(self, pids: dict[str, int], database: str | None = None) -> None:
        self._pids = pids
        self._database = database
        self._before: dict[str, float | None] = {}
        self._backends: dict[int, float] = {}
        self._started = 0.0
        self.elapsed = 0.0
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float | None]:
        found: dict[str, float | None] = {n: cpu_seconds(p) for n, p in self._pids.items()}
        found[self.SELF] = time.process_time()
        return found

    def start(self) -> None:
        self._started = time.monotonic()
        self._before = self._now()
        if self._database:
            self._backends = postgres_backends(self._database)

    def stop(self) -> dict[str, float]:
        """CPU seconds each used over the window."""
        self.elapsed = max(time.monotonic() - self._started, 1e-9)
        for name, value in self._now().items():
            before = self._before.get(name)
            if value is not None and before is not None:
                self.used[name] = value - before
        if self._database:
            now = postgres_backends(self._database)
            self.used[self.BACKENDS] = sum(v - self._backends.get(p, 0.0) for p, v in now.items())
        return self.used


@dataclass
class Service:
    """A service in a subprocess, its stderr in a temporary file (shown if it fails)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str | None = None
    process: subprocess.Popen[bytes] | None = None
    log: TextIO | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, *self.argv],
            env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Poll `ready_url` until it answers 200; fail with the service's output."""
        assert self.process is not None
        assert self.ready_url is not None
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise BenchError(f"{self.name} exited early:\n{self.output()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.ready_url)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise BenchError(f"{self.name} not ready after {timeout_s}s:\n{self.output()}")

    def output(self, tail: int = 4000) -> str:
        if self.log is None:
            return ""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-tail:]

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after the grace period."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.log is not None:
            self.log.close()
            self.log = None


# -- statistics and reporting -----------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclass(frozen=True)
class Target:
    """One target: `metric` compared with `limit` (`>=` or `<`)."""

    metric: str
    op: str
    limit: float

    def met(self, value: float) -> bool:
        return value >= self.limit if self.op == ">=" else value < self.limit

    def describe(self) -> str:
        return f"{self.metric} {self.op} {self.limit:g}"


@dataclass
class Result:
    """What a benchmark reports: a table, flat metrics and its targets."""

    name: str
    columns: list[str]
    rows: list[list[Any]]
    metrics: dict[str, Any]
    targets: list[Target]
    notes: list[str] = field(default_factory=list)

    def verdicts(self) -> dict[str, bool]:
        return {t.describe(): t.met(float(self.metrics[t.metric])) for t in self.targets}

    @property
    def ok(self) -> bool:
        return all(self.verdicts().values())

    def as_json(self) -> dict[str, Any]:
        return {
            "bench": self.name,
            "ok": self.ok,
            "metrics": self.metrics,
            "targets": self.verdicts(),
        }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def render_table(result: Result, out: TextIO = sys.stdout) -> None:
    """A plain-text table, then the targets with PASS/MISS."""
    cells = [[_cell(v) for v in row] for row in result.rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
        for i, h in enumerate(result.columns)
    ]
    print(f"\n== {result.name} ==", file=out)
    print("  ".join(h.ljust(w) for h, w in zip(result.columns, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)), file=out)
    for target in result.targets:
        value = float(result.metrics[target.metric])
        verdict = "PASS" if target.met(value) else "MISS"
        print(f"target {target.describe()}: {_cell(value)} {verdict}", file=out)
    for note in result.notes:
        print(f"note: {note}", file=out)
    out.flush()


def emit_json(payload: dict[str, Any], out: TextIO = sys.stdout) -> None:
    """The one machine-readable line."""
    print(json.dumps(payload, separators=(",", ":"), default=str), file=out, flush=True)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (CI)")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a target is missed (else report only)"
    )
    return parser


def finish(result: Result, *, check: bool) -> int:
    """Print the table and the JSON line; the exit code."""
    render_table(result)
    emit_json(result.as_json())
    return 1 if check and not result.ok else 0


def machine_busy_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)
