"""Following a mailing until it ends: `GET /mailings/{id}` every `interval` seconds, shown as a
live rich progress bar on a terminal, or as one line per change elsewhere (a pipe, a log, CI).

Phases, as the API reports them:
- PARSING: the file is being read; `counts.pending` grows with the addresses found so far and
  `counts.rows` is written when the parse ends (no total yet: the bar pulses);
- RUNNING (or PAUSED): sent + failed + cancelled out of `counts.valid`, the rate measured here
  (over the last 30 s) and the ETA: the pending recipients at that rate once it has been
  measured over 10 s or more (it counts what shares the provider: other mailings, single
  emails), before that the API's `etaSeconds` (the pending recipients at the provider's rate);
- COMPLETED, CANCELLED or FAILED: the end.

Following only reads: Ctrl-C (KeyboardInterrupt) leaves here and the mailing goes on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
)

from relaybox.cli import views
from relaybox.cli.http import Api

FINISHED = frozenset({"COMPLETED", "CANCELLED", "FAILED"})
RATE_WINDOW_S = 30.0
MEASURED_S = 10.0  # a rate measured over this long or more gives the ETA


@dataclass
class Pace:
    """The rate at which recipients finish, over the last `window_s` seconds of samples."""

    window_s: float = RATE_WINDOW_S
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, at: float, done: int) -> None:
        self.samples.append((at, done))
        while len(self.samples) > 2 and at - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def span_s(self) -> float:
        return self.samples[-1][0] - self.samples[0][0] if self.samples else 0.0

    def per_second(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None


def done_count(detail: dict[str, Any]) -> int:
    counts = detail["counts"]
    return int(counts["sent"]) + int(counts["failed"]) + int(counts["cancelled"])


def parsing(detail: dict[str, Any]) -> bool:
    """Still reading the file: PARSING, or PAUSED before its parse ended (no rows yet)."""
    status = detail["status"]
    return bool(status == "PARSING" or (status == "PAUSED" and detail["counts"]["rows"] == 0))


def found_so_far(detail: dict[str, Any]) -> int:
    """The addresses the parse stored so far (each a recipient, PENDING until dispatched)."""
    return done_count(detail) + int(detail["counts"]["pending"])


def eta_seconds(
    detail: dict[str, Any], per_second: float | None, measured_s: float
) -> float | None:
    """While RUNNING: the pending recipients at the measured rate (measured long enough), else
    the API's estimate (at the provider's configured rate)."""
    if detail["status"] != "RUNNING":
        return None
    pending = int(detail["counts"]["pending"])
    if per_second and (measured_s >= MEASURED_S or detail.get("etaSeconds") is None):
        return pending / per_second
    return None if detail.get("etaSeconds") is None else float(detail["etaSeconds"])


def parsed_line(detail: dict[str, Any]) -> str:
    c = detail["counts"]
    return (
        f"parsed {c['rows']} rows: {c['valid']} valid, {c['invalid']} invalid, "
        f"{c['duplicates']} duplicates"
    )


def counts_text(detail: dict[str, Any], per_second: float | None, measured_s: float = 0.0) -> str:
    """`sent 40 · failed 0 · pending 62 · 4.0/s · ETA 15 s` (or the parse's progress)."""
    c = detail["counts"]
    if parsing(detail):
        return (
            f"parsing: {found_so_far(detail)} addresses so far ({views.size(detail['fileBytes'])})"
        )
    text = f"sent {c['sent']} · failed {c['failed']} · pending {c['pending']}"
    if c["cancelled"]:
        text += f" · cancelled {c['cancelled']}"
    if detail["status"] in FINISHED:
        return text
    eta = eta_seconds(detail, per_second, measured_s)
    when = "paused" if detail["status"] == "PAUSED" else f"ETA {views.duration(eta)}"
    return f"{text} · {views.rate(per_second)} · {when}"


def plain_line(detail: dict[str, Any], per_second: float | None, measured_s: float = 0.0) -> str:
    """One progress line for a pipe or a log."""
    head = f"{detail['status']:<9}"
    said = counts_text(detail, per_second, measured_s)
    if parsing(detail):
        return f"{head} {said}"
    valid = int(detail["counts"]["valid"])
    share = f" ({100 * done_count(detail) / valid:.1f}%)" if valid else ""
    return f"{head} {done_count(detail)}/{valid}{share} · {said}"


class View(Protocol):
    def __enter__(self) -> View: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def update(self, detail: dict[str, Any], pace: Pace) -> None: ...


class LineView:
    """A line each time the status or a count changes, on stdout or stderr."""

    def __init__(self, err: bool) -> None:
        self._err = err
        self._last: tuple[Any, ...] | None = None
        self._parsed = False

    def __enter__(self) -> LineView:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def update(self, detail: dict[str, Any], pace: Pace) -> None:
        if not self._parsed and not parsing(detail) and detail["counts"]["rows"]:
            self._parsed = True
            typer.echo(parsed_line(detail), err=self._err)
        state = (detail["status"], tuple(sorted(detail["counts"].items())))
        if state != self._last:
            self._last = state
            typer.echo(plain_line(detail, pace.per_second(), pace.span_s()), err=self._err)


class BarView:
    """rich's live progress bar: pulsing while the file is parsed, then recipients finished out
    of the valid ones."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            SpinnerColumn(finished_text="✓"),
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[line]}"),
            console=console,
            refresh_per_second=4,
        )
        self._task: TaskID | None = None
        self._parsed = False

    def __enter__(self) -> BarView:
        self._progress.__enter__()
        self._task = self._progress.add_task("", total=None, line="", visible=False)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.__exit__(kind, exc, tb)

    def update(self, detail: dict[str, Any], pace: Pace) -> None:
        assert self._task is not None
        line = views.cell(counts_text(detail, pace.per_second(), pace.span_s()))
        status = detail["status"]
        description = f"[bold]{views.status(f'{status:<9}')}[/]"
        if parsing(detail):
            self._progress.update(
                self._task,
                description=description,
                total=None,
                completed=found_so_far(detail),
                line=line,
                visible=True,
            )
            return
        valid = int(detail["counts"]["valid"])
        self._progress.update(
            self._task,
            description=description,
            total=max(valid, 1),
            completed=done_count(detail) if valid else (1 if status in FINISHED else 0),
            line=line,
            visible=True,
        )
        if not self._parsed and detail["counts"]["rows"]:
            self._parsed = True
            self._progress.console.print(views.cell(parsed_line(detail)))
        if status in FINISHED:
            self._progress.stop_task(self._task)
        self._progress.refresh()


def follow(
    api: Api,
    mailing_id: str,
    console: Console,
    *,
    err: bool,
    interval_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll the mailing until it is COMPLETED, CANCELLED or FAILED; its last detail.

    A bar on an interactive console, else lines (`err`: on stderr). KeyboardInterrupt goes
    through to the caller, leaving the mailing as it is.
    """
    pace = Pace()
    view: View = BarView(console) if console.is_interactive else LineView(err)
    with view:
        while True:
            detail: dict[str, Any] = api.get(f"/mailings/{mailing_id}")
            pace.add(clock(), done_count(detail))
            view.update(detail, pace)
            if detail["status"] in FINISHED:
                return detail
            sleep(interval_s)
