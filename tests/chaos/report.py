"""The chaos ledger in print: the table a reader reads, one JSON line, and `ledger.json`."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from tests.chaos.ledger import (
    IN_FLIGHT_S,
    TARGET_AFTER_LAST_FAULT_S,
    Finding,
    InboundTally,
    LeakTally,
    Ledger,
    Route,
    RouteTally,
)

ROUTE_TITLES: dict[Route, str] = {
    "email": "single emails",
    "mailing": "mailing emails",
    "meta": "Meta sends",
}
SHOWN = 5  # examples printed per finding


def table(ledger: Ledger) -> str:
    """The human-readable ledger."""
    return "\n".join(render(ledger))


def json_line(ledger: Ledger) -> str:
    """The ledger as one JSON line (`ok`, totals, per-route tallies, timing, leaks)."""
    return json.dumps(summary(ledger), separators=(",", ":"))


_COLUMNS = (
    ("items", "items"),
    ("once", "once"),
    ("crash_window", "crash-window"),
    ("unexplained", "other dups"),
    ("lost", "lost"),
    ("failed", "failed"),
    ("not_terminal", "not terminal"),
    ("calls", "provider calls"),
    ("refused", "refused"),
)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def render(ledger: Ledger) -> list[str]:
    """The ledger's lines: the per-route table, inbound webhooks, faults, timing, leaks."""
    width = max(len(title) for title in ROUTE_TITLES.values())
    head = f"{'route':<{width}}" + "".join(f" {label:>{len(label)}}" for _, label in _COLUMNS)
    lines = [f"chaos ledger ({ledger.mode}, seed {ledger.seed})", head, "-" * len(head)]
    totals = RouteTally()
    for route, title in ROUTE_TITLES.items():
        tally = ledger.routes.get(route, RouteTally())
        lines.append(_row(title, tally, width))
        for name, _ in _COLUMNS:
            setattr(totals, name, getattr(totals, name) + getattr(tally, name))
    lines += ["-" * len(head), _row("total", totals, width), ""]
    lines += _inbound_lines(ledger.inbound)
    lines += _fault_lines(ledger)
    lines += _finding_lines(ledger)
    lines += _leak_lines(ledger.leaks)
    failures = ledger.failures()
    lines.append("verdict: " + ("OK" if not failures else "FAILED: " + "; ".join(failures)))
    return lines


def _row(title: str, tally: RouteTally, width: int) -> str:
    cells = "".join(f" {getattr(tally, name):>{len(label)},}" for name, label in _COLUMNS)
    return f"{title:<{width}}{cells}"


def _inbound_lines(inbound: InboundTally) -> list[str]:
    return [
        f"inbound webhooks: {inbound.events:,} messages in {inbound.conversations:,} "
        f"conversations, {inbound.posts:,} posts ({inbound.planned_duplicates:,} duplicates, "
        f"{inbound.out_of_order:,} out of order; {inbound.answered_duplicate:,} answered "
        f"'duplicate')",
        f"  stored once {inbound.stored_once:,}, missing {inbound.missing:,}, stored twice "
        f"{inbound.stored_twice:,}; conversations with a wrong preview, time or unread count: "
        f"{inbound.conversations_wrong:,}",
        "",
    ]


def _fault_lines(ledger: Ledger) -> list[str]:
    faults = ", ".join(f"{name} x{count}" for name, count in ledger.faults.items())
    timing = ledger.timing
    target = f"(target ≤ {TARGET_AFTER_LAST_FAULT_S:.0f} s)"
    if timing.terminal_s is None:
        finished = f"not every item terminal when the run stopped waiting {target}"
    else:
        finished = (
            f"every item terminal at +{timing.terminal_s:.1f} s: "
            f"{_seconds(timing.after_last_fault_s)} after the last fault {target}"
        )
    return [
        f"faults: {faults}; all along, {ledger.failure_rate:.0%} of provider calls answered "
        "5xx (SMTP 451)",
        f"last fault ended at +{timing.last_fault_s:.1f} s; {finished}; "
        f"run {timing.duration_s:.0f} s",
        f"crash-window repeats per consumer kill: {ledger.per_kill or '-'} "
        f"(bound: prefetch {ledger.prefetch}; a kill from {IN_FLIGHT_S:g} s before to "
        f"{ledger.crash_window_s:g} s after the accepted call)",
        "CPU seconds: " + ", ".join(f"{name} {sec:g}" for name, sec in ledger.cpu_s.items()),
    ]


def _finding_lines(ledger: Ledger) -> list[str]:
    lines: list[str] = []
    by_outcome: dict[str, list[Finding]] = {}
    for finding in ledger.findings:
        by_outcome.setdefault(finding.outcome, []).append(finding)
    for outcome, found in by_outcome.items():
        lines.append(f"{outcome}: {len(found)}")
        lines += [f"  {f.route} {f.key}: {f.detail}" for f in found[:SHOWN]]
    if ledger.stray_keys:
        lines.append(f"provider calls for unknown items: {ledger.stray_keys}")
    lines += [f"problem: {problem}" for problem in ledger.problems]
    return lines


def _leak_lines(leaks: LeakTally) -> list[str]:
    lines = [
        f"secrets in logs: {leaks.leaking_lines} lines ({leaks.lines:,} lines in "
        f"{leaks.files} log files checked for {leaks.secrets:,} secrets and any JWT)"
    ]
    return lines + [f"  {example}" for example in leaks.examples[:SHOWN]]


def summary(ledger: Ledger) -> dict[str, Any]:
    """The JSON form of the ledger."""
    return {
        "chaos": ledger.mode,
        "ok": ledger.ok,
        "seed": ledger.seed,
        "items": ledger.items,
        "lost": ledger.total("lost"),
        "duplicates": {
            "crashWindow": ledger.total("crash_window"),
            "unexplained": ledger.total("unexplained"),
            "perKill": ledger.per_kill,
            "prefetch": ledger.prefetch,
        },
        "failed": ledger.total("failed"),
        "notTerminal": ledger.total("not_terminal"),
        "terminalAfterLastFaultS": _rounded(ledger.timing.after_last_fault_s),
        "durationS": round(ledger.timing.duration_s, 1),
        "routes": {route: asdict(tally) for route, tally in ledger.routes.items()},
        "inbound": asdict(ledger.inbound),
        "faults": ledger.faults,
        "providerFailureRate": ledger.failure_rate,
        "cpuS": ledger.cpu_s,
        "secretsInLogs": ledger.leaks.leaking_lines,
        "logLinesChecked": ledger.leaks.lines,
        "failures": ledger.failures(),
    }


def details(ledger: Ledger) -> dict[str, Any]:
    """The summary plus every finding and fault: what `ledger.json` keeps beside the logs."""
    return {
        **summary(ledger),
        "findings": [asdict(finding) for finding in ledger.findings],
        "faultEvents": ledger.events,
        "leakExamples": ledger.leaks.examples,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
