"""Where the test PostgreSQL and RabbitMQ are: environment, else localhost, else testcontainers."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

DEFAULT_DB = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True)
class Servers:
    database_admin_url: str  # any database on the server; tests create their own next to it
    amqp_url: str


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url.replace("+asyncpg", ""))
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 2
        ):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def locate() -> Iterator[Servers]:
    """Yield reachable servers; start containers only if none are configured or local."""
    db = os.environ.get("RELAYBOX_TEST_DATABASE_URL", DEFAULT_DB)
    amqp = os.environ.get("RELAYBOX_TEST_AMQP_URL", DEFAULT_AMQP)
    if _reachable(db, 5432) and _reachable(amqp, 5672):
        yield Servers(db, amqp)
        return
    if not shutil.which("docker"):
        raise RuntimeError(
            f"PostgreSQL ({db}) or RabbitMQ ({amqp}) is unreachable and Docker is not available; "
            "start them or set RELAYBOX_TEST_DATABASE_URL / RELAYBOX_TEST_AMQP_URL"
        )
    from testcontainers.postgres import PostgresContainer
    from testcontainers.rabbitmq import RabbitMqContainer

    with (
        PostgresContainer("postgres:16", driver="asyncpg") as pg,
        RabbitMqContainer("rabbitmq:3.13-management") as mq,
    ):
        params = mq.get_connection_params()
        yield Servers(
            pg.get_connection_url(),
            f"amqp://guest:guest@{params.host}:{params.port}/",
        )
