"""How the API's values read in a terminal: durations, sizes, timestamps, rates, and tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.markup import escape
from rich.table import Table

STATUS_STYLES = {
    "PENDING": "yellow",
    "PARSING": "yellow",
    "SENDING": "cyan",
    "RUNNING": "cyan",
    "PAUSED": "magenta",
    "SENT": "green",
    "COMPLETED": "green",
    "DELIVERED": "green",
    "READ": "green",
    "REPLAYED": "green",
    "FAILED": "red",
    "CANCELLED": "red",
    "DISCARDED": "dim",
    "OPEN": "yellow",
    "REFUSED": "red",
}


def duration(seconds: float | None) -> str:
    """`42 s`, `3 min 05 s`, `2 h 07 min`, `11 d 13 h`; `-` for None."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


def size(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def rate(per_second: float | None) -> str:
    """`4.0/s`, or `6.0/min` below one a second; `-` when unknown."""
    if per_second is None:
        return "-/s"
    if per_second >= 1 or per_second == 0:
        return f"{per_second:.1f}/s"
    return f"{per_second * 60:.1f}/min"


def when(value: str | None) -> str:
    """An API timestamp (ISO 8601) in local time, to the second; `-` for null."""
    if not value:
        return "-"
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return value
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def status(value: str | None) -> str:
    """A status word in its colour (rich markup)."""
    if not value:
        return "-"
    style = STATUS_STYLES.get(value.strip().upper(), "")
    return f"[{style}]{escape(value)}[/]" if style else escape(value)


def cell(value: Any) -> str:
    """A value as table text (markup escaped)."""
    return "-" if value is None else escape(str(value))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    """A table whose cells are already rich markup (see `cell` and `status`)."""
    found = Table(title=title, title_justify="left", header_style="bold")
    for name in columns:
        found.add_column(name, overflow="fold")
    for row in rows:
        found.add_row(*row)
    return found


def pairs(rows: Iterable[tuple[str, str]]) -> Table:
    """`label  value` lines (values are rich markup)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for label, value in rows:
        grid.add_row(label, value)
    return grid
