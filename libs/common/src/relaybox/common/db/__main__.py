"""`python -m relaybox.common.db upgrade|downgrade REV`: run the migrations."""

from __future__ import annotations

import argparse
import sys

from relaybox.common.db.migrate import DatabaseUnreachableError, downgrade, upgrade
from relaybox.common.settings import ServiceSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relaybox.common.db")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="create the database if missing and migrate to head")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="migrate back to a revision")
    down.add_argument("revision")
    args = parser.parse_args(argv)
    url = ServiceSettings().database.url
    try:
        if args.command == "upgrade":
            upgrade(url, args.revision)
        else:
            downgrade(url, args.revision)
    except DatabaseUnreachableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
