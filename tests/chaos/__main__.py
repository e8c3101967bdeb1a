"""`python -m tests.chaos [--smoke] [--seed N] [--logs DIR]`: a chaos run and its ledger."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

from tests.chaos import report
from tests.chaos.plans import FULL, SMOKE
from tests.chaos.run import run
from tests.support.servers import locate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="the ~60 s run of the test suite")
    parser.add_argument("--seed", type=int, default=None, help="replay a run's random choices")
    parser.add_argument("--logs", type=Path, default=None, help="where the services log")
    parser.add_argument("--keep", action="store_true", help="keep the database and topology")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    log_dir = args.logs or Path(tempfile.mkdtemp(prefix="relaybox-chaos-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    with locate() as servers:
        plan = SMOKE if args.smoke else FULL
        ledger = asyncio.run(run(plan, servers, log_dir, args.seed, keep=args.keep))
    print(report.table(ledger))
    print(report.json_line(ledger))
    print(f"service logs: {log_dir}", file=sys.stderr)
    return 0 if ledger.ok else 1


if __name__ == "__main__":
    sys.exit(main())
