"""The ledger of a chaos run: per item, how often a provider accepted it, and the verdict.

The providers' side is the truth: the mocks record every call per item key with de-duplication
off. An item is delivered once when one provider accepted it once; a second acceptance is
explained only by the documented crash window (a consumer killed after its call left and before
`SENT` was recorded: README, "What a crash can cost"), so each extra acceptance needs a kill of a
consumer that could have made the earlier call, before the repeat and around the earlier
acceptance: at most `crash_window_s` (the lease) after it, or up to `IN_FLIGHT_S` before it (a
request that left just before the kill is accepted when the provider gets to it). Any other
repeat, and any item no provider accepted, fails the run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

Route = Literal["email", "mailing", "meta"]
TERMINAL = frozenset({"SENT", "DELIVERED", "READ", "FAILED"})
TARGET_AFTER_LAST_FAULT_S = 60.0
IN_FLIGHT_S = 10.0  # the providers' client timeout: no call is answered later than this
SLOWEST = 3  # the items whose last acceptance came last: what the tail of a run is made of


@dataclass(frozen=True)
class Acceptance:
    """One call a provider accepted: when (epoch seconds) and which provider."""

    at: float
    provider: str  # "smtp" | "email-api" | "meta"


@dataclass(frozen=True)
class Kill:
    """A consumer killed with SIGKILL: when, and the email provider it sent through."""

    at: float
    email_provider: str  # "smtp" | "email-api"


@dataclass(frozen=True)
class Item:
    """One thing the run asked relaybox to deliver, with its final status in relaybox."""

    route: Route
    key: str  # the email id or the Meta message id: the providers' idempotency key
    status: str
    attempts: int = 0
    last_error: str | None = None

    @property
    def row(self) -> str:
        """The row's side of a finding: status, attempts and last error."""
        return f"row {self.status}, attempts {self.attempts}, last error {self.last_error!r}"


@dataclass
class RouteTally:
    """Counts of one route's items by outcome, and the provider calls they took."""

    items: int = 0
    once: int = 0
    crash_window: int = 0  # items sent more than once, every repeat explained by a kill
    unexplained: int = 0  # items sent more than once without a kill to explain it
    lost: int = 0  # accepted by relaybox, never by a provider (and not FAILED)
    failed: int = 0  # FAILED in relaybox (attempts used up): not delivered
    given_back: int = 0  # a provider accepted it, yet relaybox recorded FAILED
    not_terminal: int = 0  # still PENDING/SENDING when the run ended
    calls: int = 0
    refused: int = 0  # calls a provider answered 5xx / 429 / SMTP 4xx


@dataclass
class InboundTally:
    """Inbound webhooks: every distinct message stored exactly once."""

    events: int = 0
    posts: int = 0
    planned_duplicates: int = 0
    out_of_order: int = 0
    answered_duplicate: int = 0
    stored_once: int = 0
    missing: int = 0
    stored_twice: int = 0
    conversations: int = 0
    conversations_wrong: int = 0  # preview, last message time or unread count off

    @property
    def ok(self) -> bool:
        return (
            self.stored_once == self.events
            and self.missing == 0
            and self.stored_twice == 0
            and self.conversations_wrong == 0
        )


@dataclass
class LeakTally:
    """The secrets grep over every captured log line of the run."""

    files: int = 0
    lines: int = 0
    secrets: int = 0
    leaking_lines: int = 0
    examples: list[str] = field(default_factory=list)  # "file:line: kind", never the secret


@dataclass
class Finding:
    """One item worth a look: its route, key, outcome and the provider-side story."""

    route: Route
    key: str
    outcome: str
    detail: str


@dataclass
class Timing:
    """Moments of the run in seconds after its start."""

    last_fault_s: float = 0.0
    terminal_s: float | None = None
    duration_s: float = 0.0

    @property
    def after_last_fault_s(self) -> float | None:
        if self.terminal_s is None:
            return None
        return max(0.0, self.terminal_s - self.last_fault_s)


@dataclass
class Ledger:
    """Everything the run measured; `ok` is the verdict, `table()` and `json_line()` print it."""

    mode: str
    seed: int
    prefetch: int
    crash_window_s: float
    routes: dict[Route, RouteTally] = field(default_factory=dict)
    inbound: InboundTally = field(default_factory=InboundTally)
    faults: dict[str, int] = field(default_factory=dict)
    failure_rate: float = 0.0  # the providers' steady share of 5xx (SMTP 451), all run long
    per_kill: list[int] = field(default_factory=list)  # crash-window repeats each kill explains
    findings: list[Finding] = field(default_factory=list)
    stray_keys: int = 0  # provider calls for keys the run never created
    leaks: LeakTally = field(default_factory=LeakTally)
    timing: Timing = field(default_factory=Timing)
    problems: list[str] = field(default_factory=list)  # what the harness itself saw go wrong
    cpu_s: dict[str, float] = field(default_factory=dict)  # per service, for the reader
    events: list[str] = field(default_factory=list)  # each fault with its epoch start-end

    def total(self, name: str) -> int:
        return sum(int(getattr(tally, name)) for tally in self.routes.values())

    @property
    def items(self) -> int:
        return self.total("items") + self.inbound.events

    def failures(self) -> list[str]:
        """Every target the run missed, in words (empty: the run passed)."""
        missed = [
            f"{self.total(name)} {label}"
            for name, label in (
                ("lost", "lost"),
                ("unexplained", "duplicated outside the crash window"),
                ("failed", "FAILED"),
                ("given_back", "accepted by a provider yet FAILED"),
                ("not_terminal", "not terminal"),
            )
            if self.total(name)
        ]
        if not self.inbound.ok:
            missed.append("inbound webhooks not stored exactly once (or conversations off)")
        if any(count > self.prefetch for count in self.per_kill):
            missed.append(f"a kill explains more than prefetch ({self.prefetch}) repeats")
        if self.stray_keys:
            missed.append(f"{self.stray_keys} provider calls for unknown items")
        invalid = sum(1 for f in self.findings if f.outcome == "token not valid")
        if invalid:
            missed.append(f"{invalid} recipients' last token does not verify")
        after = self.timing.after_last_fault_s
        if after is None or after > TARGET_AFTER_LAST_FAULT_S:
            took = "never" if after is None else f"{after:.1f} s"
            missed.append(f"terminal {took} after the last fault (target ≤ 60 s)")
        if self.leaks.leaking_lines:
            missed.append(f"{self.leaks.leaking_lines} log lines hold a secret")
        return missed + self.problems

    @property
    def ok(self) -> bool:
        return not self.failures()


# --- classification --------------------------------------------------------------------------


def explain_repeats(
    route: Route,
    accepted: Sequence[Acceptance],
    kills: Sequence[Kill],
    window_s: float,
) -> list[int | None]:
    """For each acceptance after the first, the index of the kill that explains it, or None.

    A repeat after acceptance `a` is explained by a kill `k` before the repeat with
    `a.at - IN_FLIGHT_S <= k.at <= a.at + window`, of a consumer that could have made call `a`
    (any consumer sends Meta messages; an email went through the killed consumer's provider).
    """
    ordered = sorted(accepted, key=lambda a: a.at)
    explained: list[int | None] = []
    for earlier, later in itertools.pairwise(ordered):
        found = None
        for index, kill in enumerate(kills):
            could_send = route == "meta" or kill.email_provider == earlier.provider
            in_window = earlier.at - IN_FLIGHT_S <= kill.at <= earlier.at + window_s
            in_window = in_window and kill.at <= later.at
            if could_send and in_window:
                found = index
                break
        explained.append(found)
    return explained


def tally_items(
    ledger: Ledger,
    items: Iterable[Item],
    accepted: dict[str, list[Acceptance]],
    calls: dict[str, int],
    kills: Sequence[Kill],
) -> None:
    """Classify every item into its route's tally, collecting findings and per-kill counts."""
    ledger.per_kill = [0] * len(kills)
    finished: list[tuple[float, Item, list[Acceptance]]] = []
    for item in items:
        tally = ledger.routes.setdefault(item.route, RouteTally())
        tally.items += 1
        got = accepted.get(item.key, [])
        tally.calls += calls.get(item.key, 0)
        tally.refused += calls.get(item.key, 0) - len(got)
        _classify(ledger, tally, item, got, kills)
        if got:
            finished.append((max(a.at for a in got), item, got))
    for _, item, got in sorted(finished, key=lambda f: f[0])[-SLOWEST:]:
        detail = f"{_story(got)}; {item.row}; {calls.get(item.key, 0)} calls"
        ledger.findings.append(Finding(item.route, item.key, "slowest", detail))


def _classify(
    ledger: Ledger, tally: RouteTally, item: Item, got: list[Acceptance], kills: Sequence[Kill]
) -> None:
    if item.status not in TERMINAL:
        tally.not_terminal += 1
        ledger.findings.append(Finding(item.route, item.key, "not terminal", item.row))
    if not got:
        if item.status == "FAILED":
            tally.failed += 1
            ledger.findings.append(Finding(item.route, item.key, "failed", item.row))
        elif item.status in TERMINAL:
            tally.lost += 1
            ledger.findings.append(Finding(item.route, item.key, "lost", item.row))
        return
    if item.status == "FAILED":
        tally.given_back += 1
        detail = f"{_story(got)}; {item.row}"
        ledger.findings.append(Finding(item.route, item.key, "given back", detail))
    if len(got) == 1:
        tally.once += 1
        return
    explained = explain_repeats(item.route, got, kills, ledger.crash_window_s)
    if all(index is not None for index in explained):
        tally.crash_window += 1
        for index in explained:
            assert index is not None
            ledger.per_kill[index] += 1
        kill_ids = ", ".join(f"kill #{i + 1}" for i in explained if i is not None)
        ledger.findings.append(
            Finding(item.route, item.key, "crash window", f"{_story(got)} ({kill_ids})")
        )
    else:
        tally.unexplained += 1
        detail = f"{_story(got)}; {item.row}"
        ledger.findings.append(Finding(item.route, item.key, "unexplained", detail))


def _story(got: Sequence[Acceptance]) -> str:
    first = min(a.at for a in got)
    moments = ", ".join(
        f"{a.provider}@+{a.at - first:.3f}s" for a in sorted(got, key=lambda a: a.at)
    )
    stamp = datetime.fromtimestamp(first, UTC).isoformat(timespec="milliseconds")
    return f"accepted {moments} (first {stamp})"
