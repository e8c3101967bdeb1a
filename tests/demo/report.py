"""The demo's report: one section per scene (what happened, in lines and tables) and the checks
each scene asserted; rendered as Markdown for the terminal and `demo-report.md`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Check:
    """One assertion of the demo: what was checked, whether it held, and what was seen."""

    name: str
    ok: bool
    seen: str = ""


@dataclass(frozen=True)
class Details:
    """Long evidence (a table of every recipient): a collapsed block in the file, one line
    pointing at the file on the terminal."""

    summary: str
    lines: list[str]

    def render(self, full: bool) -> list[str]:
        if not full:
            return [f"({self.summary}: in the report file, demo-report.md)"]
        return ["", f"<details><summary>{self.summary}</summary>", *self.lines, "</details>", ""]


@dataclass
class Section:
    """One scene's part of the report."""

    title: str
    lines: list[str | Details] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.lines.append(text)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.lines.extend(table(headers, rows))

    def details(
        self, summary: str, headers: Sequence[str], rows: Sequence[Sequence[object]]
    ) -> None:
        self.lines.append(Details(summary, table(headers, rows)))

    def check(self, name: str, ok: bool, seen: object = "") -> bool:
        self.checks.append(Check(name, bool(ok), str(seen)))
        return bool(ok)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A Markdown table (pipes in cells escaped), with a blank line before and after."""

    def cells(values: Sequence[object]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    return ["", cells(headers), "|" + "---|" * len(headers), *(cells(r) for r in rows), ""]


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def render(header: list[str], sections: list[Section], *, full: bool = True) -> str:
    """The whole report: header lines, the verdict, each section and its checks (`full`: with
    the long tables, for the file)."""
    checks = [c for s in sections for c in s.checks]
    failed = [c for c in checks if not c.ok]
    verdict = "OK" if not failed and checks else "FAILED"
    out = ["# relaybox demo", "", *header, ""]
    out.append(
        f"**Verdict: {verdict}** — {len(checks) - len(failed)} of {len(checks)} checks held."
    )
    for check in failed:
        out.append(f"- FAILED: {check.name} (seen: {check.seen})")
    for section in sections:
        out += ["", f"## {section.title}", ""]
        for line in section.lines:
            out += line.render(full) if isinstance(line, Details) else [line]
        out += ["", "Checks:", ""]
        out += [
            f"- {'ok  ' if c.ok else 'FAIL'} {c.name}" + (f" — {c.seen}" if c.seen else "")
            for c in section.checks
        ]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(paragraphs(out))) + "\n"


def paragraphs(lines: list[str]) -> list[str]:
    """A blank line between a list and the text after it (else Markdown continues the item)."""
    out: list[str] = []
    for line in lines:
        after_item = out and out[-1].startswith("- ")
        if after_item and line and not line.startswith(("- ", "|")):
            out.append("")
        out.append(line)
    return out


def passed(sections: list[Section]) -> bool:
    checks = [c for s in sections for c in s.checks]
    return bool(checks) and all(c.ok for c in checks)
