"""The settings of a chaos run's processes: its secrets, ports and each service's environment,
and starting them all."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field

from relaybox.api.auth import issue_token
from relaybox.api.settings import ApiSettings, AuthSettings
from relaybox.common.db.session import asyncpg_dsn
from relaybox.common.settings import BrokerSettings
from tests.chaos.cluster import Cluster
from tests.chaos.plans import Plan
from tests.support.serving import free_port

log = logging.getLogger("chaos")

CONSUMERS = {"consumer-smtp": "smtp", "consumer-api": "http-api"}  # replica -> email provider
LEDGER_PROVIDER = {"smtp": "smtp", "http-api": "email-api"}  # email provider -> ledger's name


@dataclass(frozen=True)
class Secrets:
    """Everything secret the run hands out; the logs are grepped for each."""

    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    webhook_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    email_api_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))

    def bearer(self) -> str:
        settings = ApiSettings(auth=AuthSettings(jwt_secret=self.jwt_secret))
        return issue_token(settings, "chaos")


@dataclass(frozen=True)
class Ports:
    mock: int = field(default_factory=free_port)
    smtp: int = field(default_factory=free_port)
    api: int = field(default_factory=free_port)
    publisher: int = field(default_factory=free_port)
    consumers: tuple[int, ...] = field(default_factory=lambda: (free_port(), free_port()))

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"


@dataclass
class Setup:
    """The run's database, topology, secrets and ports."""

    plan: Plan
    database_url: str
    broker: BrokerSettings
    keys: Secrets = field(default_factory=Secrets)
    ports: Ports = field(default_factory=Ports)

    @property
    def dsn(self) -> str:
        return asyncpg_dsn(self.database_url)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
        env.update(
            {
                "RELAYBOX_DATABASE__URL": self.database_url,
                "RELAYBOX_BROKER__URL": self.broker.url,
                "RELAYBOX_BROKER__TOPOLOGY_PREFIX": self.broker.topology_prefix,
                "RELAYBOX_BROKER__RETRY_DELAYS_MS": json.dumps(self.broker.retry_delays_ms),
                "RELAYBOX_LOG__LEVEL": "INFO",
                # 4 processes x (SQLAlchemy pool + asyncpg pool) stay well under PostgreSQL's
                # default 100 connections, which the test suites running beside share
                "RELAYBOX_DATABASE__POOL_SIZE": "4",
                "RELAYBOX_DATABASE__MAX_OVERFLOW": "4",
            }
        )
        env.update(extra)
        return env


def mock_env(setup: Setup, seed: int) -> dict[str, str]:
    ports, rate = setup.ports, setup.plan.email_api_rate
    return setup.env(
        RELAYBOX_MOCK_META__PORT=str(ports.mock),
        RELAYBOX_SMTP_SINK__PORT=str(ports.smtp),
        RELAYBOX_SMTP_SINK__MAX_MESSAGES="200000",
        RELAYBOX_EMAIL_API__PASSWORD=setup.keys.email_api_password,
        RELAYBOX_EMAIL_API__RATE_LIMIT_PER_WINDOW=str(int(rate)),
        RELAYBOX_EMAIL_API__RATE_WINDOW_S="1",
        RELAYBOX_EMAIL_API__MAX_MESSAGES="200000",
        RELAYBOX_META__WEBHOOK_URL=f"{ports.url(ports.api)}/webhooks/mock-meta",
        RELAYBOX_META__WEBHOOK_SECRET=setup.keys.webhook_secret,
        RELAYBOX_META__STATUS_EVENTS="false",
        RELAYBOX_META__MAX_MESSAGES="200000",
        RELAYBOX_META__SEED=str(seed),
    )


def api_env(setup: Setup) -> dict[str, str]:
    return setup.env(
        RELAYBOX_API__PORT=str(setup.ports.api),
        RELAYBOX_AUTH__JWT_SECRET=setup.keys.jwt_secret,
        RELAYBOX_META__WEBHOOK_SECRET=setup.keys.webhook_secret,
        RELAYBOX_PUSH__WEBHOOK_SECRET=setup.keys.webhook_secret,
        RELAYBOX_RATE_LIMIT__SEND_PER_MINUTE="1000000",
        RELAYBOX_MAILINGS__PROVIDER_RATE_PER_SECOND=str(setup.plan.email_api_rate),
    )


def consumer_env(setup: Setup, provider: str, port: int) -> dict[str, str]:
    plan, ports = setup.plan, setup.ports
    return setup.env(
        RELAYBOX_CONSUMER__PORT=str(port),
        RELAYBOX_EMAIL_PROVIDER=provider,
        RELAYBOX_SMTP__PORT=str(ports.smtp),
        RELAYBOX_EMAIL_API__BASE_URL=f"{ports.url(ports.mock)}/email-api",
        RELAYBOX_EMAIL_API__PASSWORD=setup.keys.email_api_password,
        RELAYBOX_EMAIL_API__RATE_PER_SECOND=str(plan.email_api_rate),
        RELAYBOX_META__BASE_URL=ports.url(ports.mock),
        RELAYBOX_META__RATE_PER_SECOND=str(plan.meta_rate),
        RELAYBOX_LEASE_S=str(plan.lease_s),
        RELAYBOX_PREFETCH=str(plan.prefetch),
        RELAYBOX_MAX_ATTEMPTS=str(plan.max_attempts),
    )


async def start_services(cluster: Cluster, setup: Setup, seed: int) -> None:
    """mock-meta (the providers), the API, the publisher and both consumers, all at once."""
    ports = setup.ports
    replicas = [
        ("mock-meta", "relaybox.mock_meta", mock_env(setup, seed), ports.mock),
        ("api", "relaybox.api", api_env(setup), ports.api),
        (
            "publisher",
            "relaybox.publisher",
            setup.env(RELAYBOX_PUBLISHER__PORT=str(ports.publisher)),
            ports.publisher,
        ),
    ]
    for (name, provider), port in zip(CONSUMERS.items(), ports.consumers, strict=True):
        replicas.append((name, "relaybox.consumer", consumer_env(setup, provider, port), port))
    started = time.monotonic()
    await asyncio.gather(
        *(
            cluster.add(name, module, env, f"{ports.url(port)}/health")
            for name, module, env, port in replicas
        )
    )
    log.warning("%d services up in %.1f s", len(replicas), time.monotonic() - started)
