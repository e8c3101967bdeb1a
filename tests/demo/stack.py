"""The demo's stack: the five services as processes on free ports, against the demo's own
database and topology prefix, with secrets of its own (so it never meets `make run` or a test
run on the same servers)."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from relaybox.api.auth import ALL_SCOPES
from relaybox.common.auth import AuthSettings, sign_bearer
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from tests.chaos.cluster import Cluster
from tests.chaos.setup import Secrets
from tests.support.processes import service_env
from tests.support.serving import free_ports

TENANT = "demo"
"""The organisation every demo user belongs to (the `org` claim) and the Meta account's owner."""
TENANT_CLAIM = "org"  # as `make run`: the users of one organisation share its rows
RETRY_DELAYS_MS = (1000, 3000, 10000)
"""Short retry tiers, so the retried send is SENT within seconds (production: 5 s ... 10 min)."""
POOL = {"database__pool_size": 3, "database__max_overflow": 3}
"""Five processes x (SQLAlchemy + asyncpg pools) stay far below PostgreSQL's 100 connections,
which `make run` and a test suite on the same server share."""


@dataclass(frozen=True)
class Ports:
    """One free port per listener (all chosen at once, so no two collide)."""

    mock: int
    smtp: int
    api: int
    publisher: int
    consumer: int
    realtime: int

    @classmethod
    def choose(cls) -> Ports:
        return cls(*free_ports(6))


def http(port: int) -> str:
    return f"http://127.0.0.1:{port}"


@dataclass
class Stack:
    """Where everything of one demo run is, and the settings its services start with."""

    database_url: str
    broker: BrokerSettings
    log_dir: Path
    storage_dir: Path
    email_api_rate: float
    keys: Secrets = field(default_factory=Secrets)
    push_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    ports: Ports = field(default_factory=Ports.choose)
    cluster: Cluster = field(init=False)

    def __post_init__(self) -> None:
        self.cluster = Cluster(self.log_dir)
        self.broker = self.broker.model_copy(update={"retry_delays_ms": list(RETRY_DELAYS_MS)})

    @property
    def api_url(self) -> str:
        return http(self.ports.api)

    @property
    def mock_url(self) -> str:
        return http(self.ports.mock)

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.ports.realtime}/chat/stream"

    def token(self, user: str) -> str:
        """A bearer token of `user` in the demo's organisation, with every scope."""
        auth = AuthSettings(jwt_secret=self.keys.jwt_secret, tenant_claim=TENANT_CLAIM)
        return sign_bearer(auth, user, ALL_SCOPES, ttl_s=3600, tenant=TENANT)

    def _env(self, **overrides: object) -> dict[str, str]:
        return service_env(
            DatabaseSettings(url=self.database_url),
            self.broker,
            log__level="INFO",
            log__json_format="false",
            **POOL,
            **overrides,
        )

    def environments(self) -> dict[str, tuple[str, dict[str, str], int]]:
        """Each service: its module, its environment and the port of its `/health`."""
        ports, keys = self.ports, self.keys
        shared_webhooks = {
            "meta__webhook_secret": keys.webhook_secret,
            "push__webhook_secret": keys.webhook_secret,
        }
        auth = {"auth__jwt_secret": keys.jwt_secret, "auth__tenant_claim": TENANT_CLAIM}
        mock = self._env(
            mock_meta__port=ports.mock,
            smtp_sink__port=ports.smtp,
            email_api__password=keys.email_api_password,
            meta__webhook_url=f"{self.api_url}/webhooks/mock-meta",
            meta__status_events="false",  # the demo posts the status events itself, out of order
            push__receipt_url=f"{self.api_url}/webhooks/push",
            push__server_key=self.push_key,
            **shared_webhooks,
        )
        api = self._env(
            api__port=ports.api,
            meta__tenant=TENANT,
            mailings__provider_rate_per_second=self.email_api_rate,
            chat__storage__root=str(self.storage_dir),
            **auth,
            **shared_webhooks,
        )
        publisher = self._env(publisher__port=ports.publisher)
        consumer = self._env(
            consumer__port=ports.consumer,
            email_provider="http-api",
            email_api__base_url=f"{self.mock_url}/email-api",
            email_api__password=keys.email_api_password,
            email_api__rate_per_second=self.email_api_rate,
            smtp__port=ports.smtp,
            meta__base_url=self.mock_url,
            push__url=f"{self.mock_url}/push/v1/messages:send",
            push__server_key=self.push_key,
            chat__storage__root=str(self.storage_dir),
        )
        realtime = self._env(
            realtime__port=ports.realtime, realtime__replica=f"demo-{ports.realtime}", **auth
        )
        return {
            "mock-meta": ("relaybox.mock_meta", mock, ports.mock),
            "api": ("relaybox.api", api, ports.api),
            "publisher": ("relaybox.publisher", publisher, ports.publisher),
            "consumer": ("relaybox.consumer", consumer, ports.consumer),
            "realtime": ("relaybox.realtime", realtime, ports.realtime),
        }

    async def start(self) -> float:
        """Start every service at once and wait until each answers `/health`; the seconds."""
        started = time.monotonic()
        await asyncio.gather(
            *(
                self.cluster.add(name, module, env, f"{http(port)}/health")
                for name, (module, env, port) in self.environments().items()
            )
        )
        return time.monotonic() - started

    async def stop(self) -> None:
        await self.cluster.stop()

    def exited(self) -> list[str]:
        """Services whose process ended while the demo ran (each is a failure)."""
        return [
            f"{name} (exit {service.process.returncode})"
            for name, service in self.cluster.services.items()
            if service.process is not None
            and service.process.returncode is not None
            and not service.killed
        ]
