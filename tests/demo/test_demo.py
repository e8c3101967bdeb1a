"""The CI smoke of `make demo`: the whole demo, end to end, on a database of its own beside the
suite's servers; every check of its report holds, and nothing of it is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import uuid
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from sqlalchemy.engine import make_url

from relaybox.common.db.session import asyncpg_dsn
from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings
from tests.demo.stack import RETRY_DELAYS_MS
from tests.support.servers import Servers

ROOT = Path(__file__).resolve().parents[2]


async def leftovers(servers: Servers, database: str) -> list[str]:
    """What the demo left behind: its database, its topology's queues and exchanges."""
    admin = make_url(servers.database_admin_url).set(database="postgres")
    conn = await asyncpg.connect(asyncpg_dsn(admin.render_as_string(hide_password=False)))
    try:
        found = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
    finally:
        await conn.close()
    left = [database] if found else []
    settings = BrokerSettings(
        url=servers.amqp_url,
        topology_prefix=f"{database}.",
        retry_delays_ms=list(RETRY_DELAYS_MS),
    )
    topology = Topology.from_settings(settings)
    connection = await aio_pika.connect(servers.amqp_url)
    async with connection:
        for kind, names in (
            ("queue", topology.all_queues()),
            ("exchange", topology.all_exchanges()),
        ):
            for name in names:
                channel = await connection.channel()  # a failed passive check closes it
                with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                    if kind == "queue":
                        await channel.declare_queue(name, passive=True)
                    else:
                        await channel.get_exchange(name, ensure=True)
                    left.append(f"{kind} {name}")
    return left


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_demo_runs_end_to_end_and_every_check_holds(servers: Servers, tmp_path: Path) -> None:
    database = f"relaybox_demo_{uuid.uuid4().hex[:8]}"  # never the one `make demo` uses
    report_path = tmp_path / "demo-report.md"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.demo",
            "--database",
            database,
            "--database-url",
            servers.database_admin_url,
            "--broker-url",
            servers.amqp_url,
            "--report",
            str(report_path),
            "--logs",
            str(tmp_path / "logs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
        for p in sorted((tmp_path / "logs").glob("*.log"))
    )
    assert run.returncode == 0, f"{run.stdout[-6000:]}\n{run.stderr[-3000:]}\n{logs}"
    report = report_path.read_text()
    assert "**Verdict: OK**" in report
    assert "**Verdict: OK**" in run.stdout  # the terminal shows the report (short tables)
    ledger = re.search(r"<details><summary>The ledger, recipient by recipient \((\d+)\)", report)
    assert ledger, "the file has the whole ledger"
    assert report.count(" | 1 | 1 |\n") == int(ledger.group(1))  # each: 1 call, 1 accepted
    assert re.search(r"each of \d+ recipients mailed exactly once", report)
    for scene in ("1. Mailing", "2. A Meta conversation", "3. A retried send", "4. Messenger"):
        assert f"## {scene}" in report
    assert "| 3 | `invalid-email` |" in report  # the fixture's invalid rows are listed
    assert asyncio.run(leftovers(servers, database)) == []
