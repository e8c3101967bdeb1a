"""Wait until PostgreSQL's schema is at this image's Alembic head: the migration Job has run.

The init container of every relaybox pod that uses the database runs this file (mounted from the
ConfigMap `relaybox-wait-for-schema`) with the image's own Python, settings and migrations:

    python /opt/relaybox/wait-for-schema.py

It never migrates (the Job `relaybox-migrate` runs `python -m relaybox.common.db upgrade`); it
polls the `alembic_version` table and exits 0 once the database is

- at the head revision(s) of the migrations shipped in this image, or
- at a revision this image does not know: a newer schema (an image rolled back after the
  migration ran), which the older code must then live with, as it would outside Kubernetes.

Until then (no database yet, no `alembic_version` table, an older revision, PostgreSQL
unreachable) it waits, printing each new state once. `--timeout-s` makes it give up with exit
code 1 (tests use that; the init container waits as long as the Job needs). The database URL is
`RELAYBOX_DATABASE__URL`, read like every service reads it; its password is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import asyncpg
from alembic.script import ScriptDirectory

from relaybox.common.db.migrate import alembic_config
from relaybox.common.db.session import asyncpg_dsn
from relaybox.common.settings import ServiceSettings

READY, WAITING = 0, 1


async def current_revisions(url: str) -> set[str] | None:
    """The database's Alembic revisions; None when no migration ever ran there."""
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    try:
        if not await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL"):
            return None
        return {row[0] for row in await conn.fetch("SELECT version_num FROM alembic_version")}
    finally:
        await conn.close()


def state(url: str, heads: set[str], known: set[str]) -> tuple[int, str]:
    """READY or WAITING, and a one-line reason (never the URL's password)."""
    try:
        current = asyncio.run(current_revisions(url))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return WAITING, f"database not reachable yet ({type(exc).__name__})"
    if current is None:
        return WAITING, "no migration has run yet (no alembic_version table)"
    if current == heads:
        return READY, f"schema at head {sorted(heads)}"
    if current - known:
        return READY, f"schema at {sorted(current)}, newer than this image's {sorted(heads)}"
    return WAITING, f"schema at {sorted(current)}, waiting for {sorted(heads)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Wait until the schema is at this image's head.")
    parser.add_argument("--interval-s", type=float, default=2.0, help="seconds between polls")
    parser.add_argument("--timeout-s", type=float, default=0.0, help="give up after (0: never)")
    args = parser.parse_args(argv)
    url = ServiceSettings().database.url
    scripts = ScriptDirectory.from_config(alembic_config(url))
    heads = set(scripts.get_heads())
    known = {revision.revision for revision in scripts.walk_revisions()}
    deadline = time.monotonic() + args.timeout_s if args.timeout_s > 0 else None
    last = ""
    while True:
        verdict, reason = state(url, heads, known)
        if reason != last:
            print(f"wait-for-schema: {reason}", flush=True)
            last = reason
        if verdict == READY:
            return READY
        if deadline is not None and time.monotonic() >= deadline:
            print("wait-for-schema: gave up (--timeout-s)", flush=True)
            return WAITING
        time.sleep(args.interval_s)


if __name__ == "__main__":
    sys.exit(main())
