"""The plans of a chaos run: what it submits, which faults it injects when, and the settings the
services run with. `FULL` is `make chaos` (10,000 items, RabbitMQ and PostgreSQL restarts
included); `SMOKE` the ~60 s run of the test suite (process kills and provider faults only: the
suite shares its servers)."""

from __future__ import annotations

from dataclasses import dataclass

from tests.chaos.faults import Fault
from tests.chaos.workload import Counts

SERVER_FAULTS = frozenset({"broker-restart", "database-restart"})


@dataclass(frozen=True)
class Plan:
    """What a run submits, the faults it injects and the settings it runs the services with."""

    mode: str
    counts: Counts
    rate: float  # requests per second at most
    max_backlog: int  # items accepted by relaybox and not yet terminal, at most
    faults: tuple[Fault, ...]
    failure_rate: float = 0.3  # every provider's steady share of 5xx (SMTP: 451)
    lease_s: float = 10.0
    prefetch: int = 32
    max_attempts: int = 25  # 0.3^25: no item runs out of attempts by bad luck
    retry_delays_ms: tuple[int, ...] = (250, 1000, 3000)
    email_api_rate: float = 200.0  # the email API's limit (mock) and relaybox's global rate
    meta_rate: float = 200.0
    watch_s: float = 180.0  # how long after the last fault to wait for every item (3x target)

    @property
    def restarts_servers(self) -> bool:
        return any(f.kind in SERVER_FAULTS for f in self.faults)


FULL = Plan(
    mode="full",
    counts=Counts(emails=3000, mailing_rows=3000, meta_sends=2000, inbound=2000),
    rate=150.0,
    max_backlog=400,
    faults=(
        Fault(0.05, "429-burst"),
        Fault(0.10, "kill", "consumer-smtp"),
        Fault(0.18, "kill", "publisher"),
        Fault(0.26, "broker-restart"),
        Fault(0.38, "kill", "consumer-api"),
        Fault(0.45, "429-burst"),
        Fault(0.52, "database-restart"),
        Fault(0.62, "kill", "publisher"),
        Fault(0.70, "broker-restart"),
        Fault(0.82, "kill", "consumer-smtp"),
        Fault(0.90, "429-burst"),
    ),
)
SMOKE = Plan(
    mode="smoke",
    counts=Counts(emails=150, mailing_rows=100, meta_sends=100, inbound=100),
    rate=30.0,
    max_backlog=150,
    faults=(
        Fault(0.1, "429-burst"),
        Fault(0.2, "kill", "consumer-smtp"),
        Fault(0.45, "kill", "publisher"),
        Fault(0.65, "kill", "consumer-api"),
        Fault(0.85, "429-burst"),
    ),
)
