"""The chaos ledger's smoke: the full run's harness at a small scale, with process kills and
provider faults only (the suite shares its RabbitMQ and PostgreSQL, so `make chaos` alone
restarts them). Nothing lost, no repeat outside the crash window, every item terminal within
60 s of the last fault, no secret in any log line.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos import report
from tests.chaos.plans import SMOKE
from tests.chaos.run import run
from tests.support.servers import Servers

pytestmark = pytest.mark.chaos


@pytest.mark.timeout(400)
async def test_smoke_run_keeps_the_ledger(servers: Servers, tmp_path: Path) -> None:
    seed = os.environ.get("RELAYBOX_CHAOS_SEED")
    ledger = await run(SMOKE, servers, tmp_path, None if seed is None else int(seed))

    print(report.table(ledger))  # shown with -s, or with the failure
    assert ledger.ok, report.table(ledger)
    assert not SMOKE.restarts_servers
