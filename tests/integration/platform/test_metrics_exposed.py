"""Every metric the Grafana dashboards and the Prometheus rules name is served by a running service.

The five services run as real processes (`python -m relaybox.<service>`, as compose and
`make run` start them) on the test database and broker; their `/metrics` pages are fetched over
HTTP and the series names their `# TYPE` lines declare are compared with the names the PromQL of
deploy/grafana/dashboards/ and deploy/prometheus/rules/ selects (tests/support/promql.py). A
labelled metric with no child yet still has its HELP and TYPE lines, so a fresh process declares
every family it defines.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relaybox.common.settings import BrokerSettings, DatabaseSettings
from tests.support.processes import die_with_parent, service_env
from tests.support.promql import (
    PROMETHEUS_MADE,
    dashboard_queries,
    exposed_series_names,
    metric_names,
    rule_queries,
)
from tests.support.serving import free_ports

SECRET = "metrics-test-secret-that-is-long-enough-for-hs256"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0

# A family each service must declare (the page is that service's, not an empty registry).
OWN_FAMILY = {
    "api": "relaybox_api_requests_total",
    "publisher": "relaybox_outbox_backlog",
    "consumer": "relaybox_dead_letters",
    "realtime": "relaybox_realtime_connections",
    "mock-meta": "relaybox_mock_meta_sends_total",
}


@dataclass(frozen=True)
class Scraped:
    """Each service's /metrics page (and its content type), fetched over HTTP."""

    pages: dict[str, str]
    content_types: dict[str, str]


@dataclass(frozen=True)
class Service:
    module: str
    port: int
    settings: dict[str, object]  # RELAYBOX_* settings, as service_env takes them


@contextlib.contextmanager
def running_services(db: DatabaseSettings, broker: BrokerSettings) -> Iterator[dict[str, str]]:
    """api, publisher, consumer, realtime and mock-meta as processes on free ports; yields each
    one's base URL once its /health answers; terminates them at the end."""
    api, publisher, consumer, realtime, mock, smtp = free_ports(6)
    mock_url = f"http://127.0.0.1:{mock}"
    services = {
        "mock-meta": Service(
            "relaybox.mock_meta", mock, {"mock_meta__port": mock, "smtp_sink__port": smtp}
        ),
        "api": Service(
            "relaybox.api",
            api,
            {
                "api__port": api,
                "auth__jwt_secret": SECRET,
                "meta__webhook_secret": SECRET,
                "push__webhook_secret": SECRET,
            },
        ),
        "publisher": Service("relaybox.publisher", publisher, {"publisher__port": publisher}),
        "consumer": Service(
            "relaybox.consumer",
            consumer,
            {
                "consumer__port": consumer,
                "smtp__port": smtp,
                "meta__base_url": mock_url,
                "email_api__base_url": f"{mock_url}/email-api",
                "push__url": f"{mock_url}/push/v1/messages:send",
            },
        ),
        "realtime": Service(
            "relaybox.realtime",
            realtime,
            {
                "realtime__port": realtime,
                "realtime__replica": f"metrics-test-{realtime}",
                "auth__jwt_secret": SECRET,
            },
        ),
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, service in services.items():
            env = service_env(
                db, broker, database__pool_size=2, database__max_overflow=2, **service.settings
            )
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", service.module],
                env=env,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        urls = {name: f"http://127.0.0.1:{service.port}" for name, service in services.items()}
        for name, url in urls.items():
            wait_healthy(name, url, processes[name])
        yield urls
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_healthy(name: str, url: str, process: subprocess.Popen[bytes]) -> None:
    """Until the service's /health answers 200; fails at once if the process exits."""
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(timeout=2.0) as client:
        while True:
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode} (its stderr above)")
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{url}/health").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: /health did not answer in {START_TIMEOUT_S} s")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def scraped(database_url: str, broker_settings: BrokerSettings) -> Iterator[Scraped]:
    db = DatabaseSettings(url=database_url, pool_size=2, max_overflow=2)
    with running_services(db, broker_settings) as urls, httpx.Client(timeout=10.0) as client:
        pages, types = {}, {}
        for name, url in urls.items():
            response = client.get(f"{url}/metrics")
            assert response.status_code == 200, (
                f"{name}: GET /metrics answered {response.status_code}"
            )
            pages[name] = response.text
            types[name] = response.headers.get("content-type", "")
        yield Scraped(pages, types)


@pytest.mark.parametrize("service", sorted(OWN_FAMILY))
def test_service_serves_prometheus_text_with_its_metrics(scraped: Scraped, service: str) -> None:
    page = scraped.pages[service]
    assert scraped.content_types[service].startswith("text/plain"), scraped.content_types[service]
    families = {family.name for family in text_string_to_metric_families(page)}
    assert families, f"{service}: /metrics declares no metric"
    assert OWN_FAMILY[service] in exposed_series_names(page), f"{service}: {sorted(families)}"


def test_mock_meta_serves_every_mock_provider_s_metrics(scraped: Scraped) -> None:
    """deploy/prometheus/prometheus.yml scrapes mock-meta:4000/metrics: it is really served."""
    names = exposed_series_names(scraped.pages["mock-meta"])
    for prefix in ("relaybox_mock_meta_", "relaybox_mock_email_api_", "relaybox_mock_push_"):
        assert any(name.startswith(prefix) for name in names), f"no {prefix}* on mock-meta"


def test_every_metric_of_the_dashboards_and_rules_is_served(scraped: Scraped) -> None:
    served = set().union(*(exposed_series_names(page) for page in scraped.pages.values()))
    used: dict[str, list[str]] = {}
    for query in dashboard_queries() + rule_queries():
        for name in metric_names(query.expr):
            used.setdefault(name, []).append(query.where)
    assert len(used) > 20, f"too few metric names found: {sorted(used)}"
    missing = {
        name: wheres
        for name, wheres in used.items()
        if name not in served and name not in PROMETHEUS_MADE
    }
    assert missing == {}, "named by dashboards or rules, served by no service:\n" + "\n".join(
        f"  {name}: {', '.join(wheres[:3])}" for name, wheres in sorted(missing.items())
    )
