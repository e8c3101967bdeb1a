"""`python -m bench` (what `make bench` runs): every benchmark, one table each, one JSON line.

`--quick` is the few-seconds smoke version CI runs; `--check` exits 1 when a target is missed.
A benchmark that cannot run at all (server unreachable, a service crashed) exits 2.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench import (
    api_accept,
    chat_copies,
    chat_fanout,
    chat_history,
    chat_inbox,
    e2e_latency,
    mailing_ingest,
    rate_precision,
    realtime_connections,
    realtime_latency,
    realtime_replay,
    realtime_storm,
    relay,
    webhook_ingest,
)
from bench.common import Result, emit_json, render_table
from bench.peers import run as peers_run

BENCHES: dict[str, Callable[[bool], Result]] = {
    "api_accept": lambda quick: api_accept.run(quick=quick),
    "relay": lambda quick: relay.run(quick=quick),
    "e2e_latency": lambda quick: e2e_latency.run(quick=quick),
    "webhook_ingest": lambda quick: webhook_ingest.run(quick=quick),
    "rate_precision": lambda quick: rate_precision.run(quick=quick),
    "mailing_ingest": lambda quick: mailing_ingest.run(quick=quick),
    "chat_history": lambda quick: chat_history.run(quick=quick),
    "chat_inbox": lambda quick: chat_inbox.run(quick=quick),
    "chat_fanout": lambda quick: chat_fanout.run(quick=quick),
    "chat_copies": lambda quick: chat_copies.run(quick=quick),
    "realtime_connections": lambda quick: realtime_connections.run(quick=quick),
    "realtime_latency": lambda quick: realtime_latency.run(quick=quick),
    "realtime_storm": lambda quick: realtime_storm.run(quick=quick),
    "realtime_replay": lambda quick: realtime_replay.run(quick=quick),
    "peers": lambda quick: peers_run.run(quick=quick),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (CI)")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a target is missed (else report only)"
    )
    parser.add_argument(
        "--only", choices=sorted(BENCHES), action="append", help="run only these (repeatable)"
    )
    args = parser.parse_args(argv)
    summary: dict[str, Any] = {"bench": "all", "quick": args.quick, "results": {}}
    missed = failed = False
    for name in args.only or list(BENCHES):
        started = time.monotonic()
        try:
            result = BENCHES[name](args.quick)
        except Exception as exc:  # noqa: BLE001 - report it and go on with the next one
            traceback.print_exc()
            summary["results"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            failed = True
            continue
        render_table(result)
        summary["results"][name] = {
            **result.as_json(),
            "seconds_taken": round(time.monotonic() - started, 1),
        }
        missed = missed or not result.ok
    summary["ok"] = not (missed or failed)
    emit_json(summary)
    if failed:
        return 2
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
