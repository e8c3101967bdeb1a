"""The PromQL of deploy/: the expressions of the Grafana dashboards and the Prometheus rules, the
metric names they use, and the metric names a `/metrics` page declares.

Used by tests/unit/test_dashboards.py, tests/unit/test_alerts.py and
tests/integration/platform/test_metrics_exposed.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests"

PROMETHEUS_MADE = frozenset({"up"})
"""Series Prometheus writes itself for every scrape target (no service serves them)."""

# Grafana's built-in variables, as a duration PromQL accepts (for syntax checks).
GRAFANA_DURATIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
}

_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "atan2",
        "inf",
        "nan",
    }
)
# One token at a time: a string, a number or duration, a Grafana variable, a name, anything else.
_TOKEN = re.compile(
    r"""
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)(?:ms|[smhdwy])?
                 (?:\d+(?:ms|[smhdwy]))*)
    | (?P<variable>\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)
    | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<open>[({\[])
    | (?P<close>[)}\]])
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Skipped: strings, numbers and durations, Grafana variables, keywords, function and
    aggregation names (a name followed by `(`), label names (inside `{...}` and the label lists
    of by/without/on/ignoring/group_left/group_right) and everything inside `[...]` (ranges,
    subqueries). A name given as `{__name__="..."}` is refused: write the name itself.
    """
    tokens = [
        (m.lastgroup or "", m.group())
        for m in _TOKEN.finditer(expr)
        if m.lastgroup not in ("space",)
    ]
    names: set[str] = set()
    closers: list[str] = []  # what each open bracket is: "{", "[", "(" or "labels"
    for i, (kind, text) in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        previous = tokens[i - 1] if i > 0 else ("", "")
        if kind == "open":
            if text == "(" and previous[0] == "name" and previous[1].lower() in _GROUPING:
                closers.append("labels")
            else:
                closers.append(text)
            continue
        if kind == "close":
            if not closers:
                raise ValueError(f"unbalanced {text!r} in {expr!r}")
            closers.pop()
            continue
        if kind != "name" or any(c in ("{", "[", "labels") for c in closers):
            if kind == "name" and text == "__name__":
                raise ValueError(f"select metrics by name, not with __name__: {expr!r}")
            continue
        if text.lower() in _KEYWORDS or following == ("open", "("):
            continue  # a keyword, a function or an aggregation (`sum(...) by (...)`)
        if following[0] == "name" and following[1].lower() in ("by", "without"):
            continue  # an aggregation written `sum by (...) (...)`
        names.add(text)
    if closers:
        raise ValueError(f"unclosed {closers[-1]!r} in {expr!r}")
    return names


def with_grafana_durations(expr: str) -> str:
    """The expression with Grafana's built-in interval variables replaced by durations."""
    for variable, duration in GRAFANA_DURATIONS.items():
        expr = expr.replace(variable, duration)
    return expr


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it is (for messages)."""

    where: str
    expr: str


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    loaded = json.loads(path.read_text())
    assert isinstance(loaded, dict), f"{path.name} is not a JSON object"
    return loaded


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[Query]:
    """Every panel target's and every query variable's expression, in every dashboard."""
    queries = []
    for path in dashboard_files():
        dashboard = load_dashboard(path)
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                where = f"{path.name}: {panel.get('title')!r} {target.get('refId')}"
                queries.append(Query(where, str(target.get("expr", ""))))
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            query = variable.get("query")
            text = str(query.get("query", "") if isinstance(query, dict) else query)
            # label_values(<selector>, <label>) / query_result(<expr>): the PromQL part
            for wrapper in (r"label_values\((.*),\s*\w+\s*\)", r"query_result\((.*)\)"):
                if match := re.fullmatch(rf"\s*{wrapper}\s*", text, re.DOTALL):
                    text = match.group(1)
                    break
            queries.append(Query(f"{path.name}: variable {variable.get('name')!r}", text))
    return queries


def rule_files() -> list[Path]:
    return sorted(RULES.glob("*.y*ml"))


def rules() -> Iterator[tuple[Path, dict[str, Any]]]:
    """(file, rule) for every alerting and recording rule."""
    for path in rule_files():
        loaded = yaml.safe_load(path.read_text())
        for group in loaded.get("groups", []):
            for rule in group.get("rules", []):
                yield path, rule


def rule_queries() -> list[Query]:
    return [
        Query(f"{path.name}: {rule.get('alert') or rule.get('record')}", str(rule["expr"]))
        for path, rule in rules()
    ]


_TYPE_LINE = re.compile(r"^# TYPE (?P<name>[A-Za-z_:][A-Za-z0-9_:]*) (?P<type>\w+)\s*$")
# The series of a family, by type (the text format names a counter's family ..._total already,
# and gives `_created` series a gauge family of their own).
_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
}


def exposed_series_names(page: str) -> set[str]:
    """The series names a Prometheus text-format page declares, from its `# TYPE` lines (a
    labelled metric with no child yet still has them): a histogram's `_bucket`, `_sum` and
    `_count` (not its bare name, which has no series), a counter's `..._total`, a gauge's name."""
    names: set[str] = set()
    for line in page.splitlines():
        match = _TYPE_LINE.match(line)
        if match is None:
            continue
        name, kind = match.group("name"), match.group("type")
        names.update(name + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return names
