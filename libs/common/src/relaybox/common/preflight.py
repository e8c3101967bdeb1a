"""`python -m relaybox.common.preflight`: check PostgreSQL and RabbitMQ answer, clearly."""

from __future__ import annotations

import asyncio
import sys

import aio_pika
import asyncpg
from sqlalchemy.engine import make_url

from relaybox.common.db.session import asyncpg_dsn
from relaybox.common.messaging.broker import redact
from relaybox.common.settings import ServiceSettings

HINTS = {
    "PostgreSQL": "start it (e.g. `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) "
    "main start`) or set RELAYBOX_DATABASE__URL",
    "RabbitMQ": "start it (e.g. `rabbitmq-server -detached`) or set RELAYBOX_BROKER__URL",
}


async def _postgres(url: str) -> None:
    admin = make_url(url).set(database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(asyncpg_dsn(admin), timeout=5)
    await conn.close()


async def _rabbitmq(url: str) -> None:
    connection = await aio_pika.connect(url, timeout=5)
    await connection.close()


async def check(settings: ServiceSettings) -> list[str]:
    """One line per unreachable server (empty when all answer)."""
    problems = []
    db_where = make_url(settings.database.url).render_as_string(hide_password=True)
    for name, probe, where in (
        ("PostgreSQL", _postgres(settings.database.url), db_where),
        ("RabbitMQ", _rabbitmq(settings.broker.url), redact(settings.broker.url)),
    ):
        try:
            await probe
        except Exception as exc:  # noqa: BLE001 - every failure becomes a readable line
            problems.append(f"{name} is unreachable at {where}: {exc}. {HINTS[name]}.")
    return problems


def main() -> int:
    problems = asyncio.run(check(ServiceSettings()))
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
