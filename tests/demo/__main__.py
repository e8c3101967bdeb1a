"""`python -m tests.demo` (`make demo`): evidence that relaybox runs.

On the PostgreSQL and RabbitMQ that `make run` uses (`RELAYBOX_DATABASE__URL`,
`RELAYBOX_BROKER__URL`, else localhost), it drops, creates and migrates a database of its own
(`relaybox_demo`), starts mock-meta, the API, a publisher, a consumer and a realtime replica on
free ports under a topology prefix of its own, then runs four scenes through them:

1. the fixture mailing list (`../shared/fixtures/mailing_list.csv`) through the mock email API
   at a raised limit, followed to the end;
2. a Meta conversation through signed webhooks, with a duplicate and out-of-order events;
3. a send the mock email API fails once, retried to SENT;
4. a messenger exchange: a group, the realtime stream's ack (DELIVERED), a read (READ).

It prints the report and writes it to `demo-report.md`; every process is stopped and the
database dropped at the end, on failure and on Ctrl-C too. Exit status: 0 when every check
held, 1 when one failed, 2 when the servers are unreachable or the fixture is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from relaybox.common.preflight import check
from relaybox.common.settings import BrokerSettings, DatabaseSettings, ServiceSettings
from tests.demo.run import Options, progress, run
from tests.support.databases import drop_database, migrated_database

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "mailing_list.csv"
DATABASE = "relaybox_demo"
RATE = 20.0
"""Emails per second for the demo (the contract's limit is one per 10 s)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    settings = ServiceSettings()
    parser = argparse.ArgumentParser(
        prog="python -m tests.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--fixture", type=Path, default=FIXTURE, help="the mailing list (CSV)")
    parser.add_argument("--report", type=Path, default=ROOT / "demo-report.md")
    parser.add_argument("--database", default=DATABASE, help="the demo database's name")
    parser.add_argument(
        "--database-url",
        default=settings.database.url,
        help="PostgreSQL (any database of the server; the demo's goes beside it)",
    )
    parser.add_argument("--broker-url", default=settings.broker.url, help="RabbitMQ")
    parser.add_argument("--rate", type=float, default=RATE, help="email API sends per second")
    parser.add_argument("--logs", type=Path, default=None, help="keep the services' logs here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.fixture.is_file():
        print(
            f"error: no mailing list at {args.fixture} (give one with --fixture)", file=sys.stderr
        )
        return 2
    servers = ServiceSettings(
        database=DatabaseSettings(url=args.database_url), broker=BrokerSettings(url=args.broker_url)
    )
    problems = asyncio.run(check(servers))
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        return 2
    log_dir = args.logs or Path(tempfile.mkdtemp(prefix="relaybox-demo-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    storage = Path(tempfile.mkdtemp(prefix="relaybox-demo-files-"))
    ok = False
    try:
        ok = demo(args, log_dir, storage)
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM
        print("demo: interrupted; everything stopped and the database dropped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if ok and args.logs is None:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            print(f"demo: the services' logs are in {log_dir}", file=sys.stderr)
    return 0 if ok else 1


def demo(args: argparse.Namespace, log_dir: Path, storage: Path) -> bool:
    target = make_url(args.database_url).set(database=args.database)
    drop_database(target.render_as_string(hide_password=False))  # a run killed before its end
    progress(f"database {args.database}: dropping, creating, migrating")
    with migrated_database(args.database_url, args.database) as database_url:
        options = Options(
            database_url=database_url,
            broker_url=args.broker_url,
            topology_prefix=f"{args.database}.",
            fixture=args.fixture,
            rate=args.rate,
            log_dir=log_dir,
            storage_dir=storage,
        )
        report = asyncio.run(run(options))
    print(report.terminal)
    args.report.write_text(report.file, encoding="utf-8")
    progress(f"report written to {args.report}; database {args.database} dropped")
    return report.ok


if __name__ == "__main__":
    sys.exit(main())
