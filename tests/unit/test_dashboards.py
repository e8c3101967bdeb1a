"""The Grafana dashboards (deploy/grafana/dashboards/) are provisioned, well formed, valid PromQL.

Whether every metric they name is served by the running services is
tests/integration/platform/test_metrics_exposed.py; this file tests the name extraction it uses.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.promql import (
    DASHBOARDS,
    ROOT,
    dashboard_files,
    dashboard_queries,
    exposed_series_names,
    load_dashboard,
    metric_names,
    panels,
    rule_queries,
    with_grafana_durations,
)
from tests.unit.test_compose import bind_mounts, compose

PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
GRAFANA_PROVISIONING_MOUNT = "/etc/grafana/provisioning"

# What issue 13 asks each dashboard to show: the metrics that show it.
REQUIRED = {
    "relaybox-pipeline": {
        "relaybox_outbox_backlog",
        "relaybox_outbox_oldest_age_seconds",
        "relaybox_publisher_confirms_total",
        "relaybox_publisher_nacks_total",
        "relaybox_publisher_returns_total",
        "relaybox_publisher_relay_lag_seconds_bucket",
        "relaybox_consumer_messages_total",
        "relaybox_consumer_retries_total",
        "relaybox_consumer_dlq_depth",
        "relaybox_dead_letters_drained_total",
        "relaybox_dead_letters",
        "relaybox_dead_letters_oldest_age_seconds",
    },
    "relaybox-email": {
        "relaybox_consumer_attempts_count",
        "relaybox_consumer_messages_total",
        "relaybox_consumer_provider_results_total",
    },
    "relaybox-mailings": {
        "relaybox_mailing_rows_parsed_total",
        "relaybox_mailing_dispatched_total",
        "relaybox_ratelimit_wait_seconds_count",
        "relaybox_email_api_token_refreshes_total",
    },
    "relaybox-meta": {
        "relaybox_consumer_messages_total",
        "relaybox_consumer_provider_results_total",
        "relaybox_api_webhook_events_total",
    },
    "relaybox-messenger": {
        "relaybox_consumer_attempts_count",
        "relaybox_realtime_acked_copies_total",
        "relaybox_api_webhook_events_total",
        "relaybox_realtime_connections",
    },
    "relaybox-api": {
        "relaybox_api_requests_total",
        "relaybox_api_requests_error_total",
        "relaybox_api_request_duration_seconds_bucket",
    },
}


def load_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), path
    return loaded


def datasource_uids() -> set[str]:
    return {
        source["uid"]
        for path in sorted((PROVISIONING / "datasources").glob("*.y*ml"))
        for source in load_yaml(path)["datasources"]
    }


# --- provisioning ---------------------------------------------------------------------------


def test_the_provider_loads_the_dashboards_folder_compose_mounts() -> None:
    assert bind_mounts("grafana").get(GRAFANA_PROVISIONING_MOUNT) == PROVISIONING
    providers = [
        provider
        for path in sorted((PROVISIONING / "dashboards").glob("*.y*ml"))
        for provider in load_yaml(path)["providers"]
    ]
    assert providers, "no dashboard provider is provisioned"
    mounted = bind_mounts("grafana")
    for provider in providers:
        assert provider.get("type", "file") == "file"
        path = provider["options"]["path"]
        assert mounted.get(path) == DASHBOARDS, (
            f"provider {provider['name']} reads {path}; compose mounts {DASHBOARDS} at "
            f"{[t for t, s in mounted.items() if s == DASHBOARDS]}"
        )


def test_grafana_mounts_are_read_only() -> None:
    volumes = [str(v) for v in compose()["services"]["grafana"]["volumes"]]
    for volume in volumes:
        if volume.startswith("./deploy/"):
            assert volume.endswith(":ro"), volume


def test_there_are_dashboards() -> None:
    assert {path.stem for path in dashboard_files()} >= set(REQUIRED)


# --- each dashboard -------------------------------------------------------------------------


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = load_dashboard(path)
    assert dashboard["uid"] == path.stem, "the file is named after the dashboard's uid"
    assert dashboard["title"] and "relaybox" in dashboard.get("tags", [])
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    uids = datasource_uids()
    for panel in panels(dashboard):
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, f"{panel['title']}: wider than the grid"
        if panel["type"] == "row":
            continue
        assert panel["title"], panel
        assert panel["datasource"]["uid"] in uids, f"{panel['title']}: unknown datasource"
        targets = panel.get("targets", [])
        assert targets, f"{panel['title']}: no query"
        for target in targets:
            assert str(target.get("expr", "")).strip(), f"{panel['title']}: empty query"
            assert target.get("datasource", panel["datasource"])["uid"] in uids


def test_dashboard_uids_are_unique() -> None:
    uids = [load_dashboard(path)["uid"] for path in dashboard_files()]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("uid", sorted(REQUIRED))
def test_dashboard_shows_what_the_issue_asks(uid: str) -> None:
    used = set().union(
        *(metric_names(q.expr) for q in dashboard_queries() if q.where.startswith(f"{uid}.json"))
    )
    assert REQUIRED[uid] <= used, f"{uid} does not show {REQUIRED[uid] - used}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every query, as a recording rule `promtool check rules` parses (Grafana's interval
    variables replaced by durations)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; .ci/run does)")
    queries = dashboard_queries()
    rules = [
        {"record": f"dashboard:query_{i}", "expr": with_grafana_durations(q.expr)}
        for i, q in enumerate(queries)
    ]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    output = result.stdout + result.stderr
    for i, query in enumerate(queries):  # name the panel of a failing query
        assert f'dashboard:query_{i}"' not in output, f"{query.where}: {output}"
    assert result.returncode == 0, output


# --- metric name extraction (used by the integration test) -----------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (route) (rate(a_total{route="x", b=~"y|z"}[5m]))', {"a_total"}),
        ("sum(rate(a_total[5m])) by (le, route)", {"a_total"}),
        ("sum without (instance) (a)", {"a"}),
        ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval])))", {"h_bucket"}),
        ("a / on (instance) group_left (job) b", {"a", "b"}),
        ("a unless b offset 15m and bool c", {"a", "b", "c"}),
        ("min_over_time(max by (route) (g)[15m:1m])", {"g"}),
        ('count_values("value", g) > 1e3 or -x', {"g", "x"}),
        ('label_replace(a, "dst", "$1", "src", "(.*)")', {"a"}),
        ("topk(10, a) @ start()", {"a"}),
        ('absent(up{job="consumer"} == 1)', {"up"}),
        ("vector(1) + time()", set()),
        ("increase(a[1h30m]) > 0x10", {"a"}),
    ],
)
def test_metric_names_of_an_expression(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    ("expr", "complaint"),
    [('{__name__="a"}', "not with __name__"), ("sum(a", "unclosed"), ("a)", "unbalanced")],
)
def test_metric_names_refuses_what_it_cannot_read(expr: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        metric_names(expr)


def test_every_query_names_a_metric() -> None:
    for query in dashboard_queries() + rule_queries():
        assert metric_names(query.expr), f"{query.where}: no metric in {query.expr!r}"


def test_exposed_series_names_follow_the_metric_types() -> None:
    page = "\n".join(
        [
            "# HELP a_total Things.",
            "# TYPE a_total counter",
            "# HELP h_seconds Durations.",
            "# TYPE h_seconds histogram",
            'h_seconds_bucket{le="+Inf"} 0.0',
            "# HELP g Level.",
            "# TYPE g gauge",
            "# HELP s Summary.",
            "# TYPE s summary",
            "# HELP a_created Created.",
            "# TYPE a_created gauge",
        ]
    )
    assert exposed_series_names(page) == {
        "a_total",
        "h_seconds_bucket",
        "h_seconds_sum",
        "h_seconds_count",
        "g",
        "s",
        "s_sum",
        "s_count",
        "a_created",
    }
