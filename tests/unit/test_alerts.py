"""The Prometheus alert rules (deploy/prometheus/rules/) are valid, unit-tested and documented.

`promtool` (Debian's `prometheus` package; `.ci/run` installs it) checks the rules and runs the
unit tests of deploy/prometheus/tests/. Without it those two tests skip; the rest do not need it.
Whether the metrics the rules name are served is tests/integration/platform/test_metrics_exposed.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.promql import ROOT, RULE_TESTS, RULES, rule_files, rules
from tests.unit.test_compose import bind_mounts

RUNBOOK = ROOT / "docs" / "runbook.md"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
SEVERITIES = {"warning", "critical"}

# What issue 13 asks an alert for, and the alerts that answer it.
REQUIRED = {
    "backlog age": {"RelayboxOutboxBacklogOld"},
    "DLQ growth": {"RelayboxDeadLettersGrowing", "RelayboxDlqNotDraining"},
    "consumer down": {"RelayboxConsumerDown", "RelayboxConsumerReplicaDown"},
    "provider error rate": {"RelayboxProviderErrorRate"},
    "429 rate": {"RelayboxProviderRateLimited"},
    "token refresh failures": {"RelayboxEmailApiTokenRefreshFailing"},
    "the API's 5xx": {"RelayboxApiErrors"},
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; .ci/run does)")
    return path


def alerts() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path, rule in rules():
        if "alert" in rule:
            assert rule["alert"] not in found, f"{rule['alert']} is defined twice"
            found[rule["alert"]] = rule | {"file": path}
    return found


def test_there_are_rules() -> None:
    assert rule_files(), f"no rule file in {RULES}"
    assert alerts()


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", *map(str, rule_files())],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def rule_test_files() -> list[Path]:
    return sorted(RULE_TESTS.glob("*.y*ml"))


def test_promtool_unit_tests_pass() -> None:
    files = rule_test_files()
    assert files, f"no rule unit test in {RULE_TESTS}"
    result = subprocess.run(
        [promtool(), "test", "rules", *map(str, files)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def alert_cases() -> Iterator[tuple[str, bool]]:
    """(alert name, whether it is expected to fire) of every alert_rule_test case."""
    for path in rule_test_files():
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                yield case["alertname"], bool(case.get("exp_alerts"))


def test_the_unit_tests_load_every_rule_file() -> None:
    loaded = set()
    for path in rule_test_files():
        for name in yaml.safe_load(path.read_text())["rule_files"]:
            loaded.add((path.parent / name).resolve())
    assert loaded == {path.resolve() for path in rule_files()}


@pytest.mark.parametrize("name", sorted(alerts()))
def test_every_alert_is_tested_firing_and_quiet(name: str) -> None:
    cases = [fires for alertname, fires in alert_cases() if alertname == name]
    assert True in cases, f"{name}: no unit test case where it fires"
    assert False in cases, f"{name}: no unit test case where it stays quiet"


def test_unit_tests_name_only_real_alerts() -> None:
    unknown = {name for name, _ in alert_cases()} - set(alerts())
    assert unknown == set(), f"unit tests of alerts that do not exist: {unknown}"


def test_the_issue_s_alerts_exist() -> None:
    for concern, names in REQUIRED.items():
        assert names <= set(alerts()), f"{concern}: missing {names - set(alerts())}"


@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_has_severity_summary_and_description(name: str) -> None:
    rule = alerts()[name]
    assert rule.get("labels", {}).get("severity") in SEVERITIES, name
    annotations = rule.get("annotations", {})
    assert annotations.get("summary"), name
    assert annotations.get("description"), name


def markdown_anchors(text: str) -> dict[str, str]:
    """GitHub's anchor of every heading (lower case, punctuation dropped, spaces to hyphens,
    repeats numbered) -> the heading's level and text."""
    anchors: dict[str, str] = {}
    seen: dict[str, int] = {}
    in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else re.match(r"^(#{1,6})\s+(.+?)\s*#*\s*$", line)
        if match is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(2).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors[slug if count == 0 else f"{slug}-{count}"] = line
    return anchors


def alerts_section(text: str) -> str:
    """The runbook from its `## Alerts` heading to the next level-2 heading."""
    match = re.search(r"^## Alerts\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, "docs/runbook.md has no '## Alerts' section"
    return match.group(1)


@pytest.mark.parametrize("name", sorted(alerts()))
def test_runbook_url_points_at_the_alert_s_runbook_section(name: str) -> None:
    url = alerts()[name].get("annotations", {}).get("runbook_url", "")
    path, _, anchor = url.partition("#")
    assert (ROOT / path).resolve() == RUNBOOK.resolve(), f"{name}: runbook_url {url!r}"
    text = RUNBOOK.read_text()
    section = markdown_anchors(alerts_section(text))
    assert anchor in markdown_anchors(text), f"{name}: docs/runbook.md has no #{anchor}"
    assert section.get(anchor) == f"### {name}", f"{name}: #{anchor} is not its ### section"
    body = alerts_section(text).split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
    for part in ("**Fires**", "**Check:**", "**Do:**"):
        assert part in body, f"docs/runbook.md#{anchor} does not say {part}"


def test_prometheus_loads_the_rules_compose_mounts() -> None:
    """prometheus.yml's rule_files, through compose's bind mounts, are exactly the rule files."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    mounts = bind_mounts("prometheus")
    loaded: set[Path] = set()
    for pattern in config.get("rule_files", []):
        directory, _, glob = pattern.rpartition("/")
        assert directory in mounts, f"rule_files {pattern}: nothing is mounted at {directory}"
        loaded.update(path.resolve() for path in mounts[directory].glob(glob))
    assert loaded == {path.resolve() for path in rule_files()}


def test_promtool_checks_the_config_with_its_rules(tmp_path: Path) -> None:
    """`promtool check config` on prometheus.yml with rule_files at their mounted sources."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    mounts = bind_mounts("prometheus")
    config["rule_files"] = [
        str(mounts[pattern.rpartition("/")[0]] / pattern.rpartition("/")[2])
        for pattern in config.get("rule_files", [])
    ]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool(), "check", "config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 rule files found" not in result.stdout, result.stdout
