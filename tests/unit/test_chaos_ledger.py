"""The chaos ledger's verdict: which repeats the crash window explains, what counts as lost, and
the inbound webhooks' plan (duplicates and out-of-order posts)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

from tests.chaos import report
from tests.chaos.leaks import find_leaks
from tests.chaos.ledger import (
    IN_FLIGHT_S,
    Acceptance,
    Item,
    Kill,
    Ledger,
    explain_repeats,
    tally_items,
)
from tests.chaos.workload import plan_inbound

WINDOW_S = 10.0


def _ledger() -> Ledger:
    ledger = Ledger("test", seed=1, prefetch=2, crash_window_s=WINDOW_S)
    ledger.timing.last_fault_s, ledger.timing.terminal_s = 10.0, 20.0
    return ledger


def test_a_repeat_right_after_a_kill_of_the_sending_kind_is_the_crash_window() -> None:
    accepted = [Acceptance(100.0, "smtp"), Acceptance(130.0, "email-api")]
    kills = [Kill(85.0, "smtp"), Kill(101.0, "email-api"), Kill(102.0, "smtp")]

    assert explain_repeats("email", accepted, kills, WINDOW_S) == [2]


def test_a_request_in_flight_at_the_kill_is_accepted_after_it() -> None:
    accepted = [Acceptance(100.0, "meta"), Acceptance(140.0, "meta")]

    assert explain_repeats("meta", accepted, [Kill(100.0 - IN_FLIGHT_S, "smtp")], WINDOW_S) == [0]
    early = Kill(100.0 - IN_FLIGHT_S - 0.1, "smtp")
    assert explain_repeats("meta", accepted, [early], WINDOW_S) == [None]


def test_a_repeat_without_a_kill_in_the_window_is_unexplained() -> None:
    accepted = [Acceptance(100.0, "smtp"), Acceptance(105.0, "smtp")]

    assert explain_repeats("email", accepted, [Kill(111.0, "smtp")], WINDOW_S) == [None]
    assert explain_repeats("email", accepted, [Kill(106.0, "smtp")], WINDOW_S) == [None]
    assert explain_repeats("email", accepted, [Kill(101.0, "email-api")], WINDOW_S) == [None]


def test_items_are_tallied_by_outcome_and_the_verdict_names_what_failed() -> None:
    ledger = _ledger()
    items = [
        Item("email", "once", "SENT"),
        Item("email", "twice", "SENT"),
        Item("email", "lost", "SENT"),
        Item("meta", "failed", "FAILED", attempts=25, last_error="HTTP 503"),
        Item("meta", "stuck", "SENDING"),
        Item("mailing", "again", "SENT"),
    ]
    accepted = {
        "once": [Acceptance(1.0, "smtp")],
        "twice": [Acceptance(1.0, "smtp"), Acceptance(30.0, "smtp")],
        "again": [Acceptance(1.0, "email-api"), Acceptance(2.0, "smtp")],
        "stuck": [Acceptance(5.0, "meta")],
    }
    calls = {"once": 2, "twice": 2, "failed": 25, "again": 2, "stuck": 1}

    tally_items(ledger, items, accepted, calls, [Kill(3.0, "smtp")])

    email, meta, mailing = ledger.routes["email"], ledger.routes["meta"], ledger.routes["mailing"]
    assert (email.items, email.once, email.crash_window, email.lost) == (3, 1, 1, 1)
    assert (email.calls, email.refused) == (4, 1)
    assert (meta.failed, meta.not_terminal, meta.once) == (1, 1, 1)
    assert (mailing.unexplained, mailing.once) == (1, 0)
    assert ledger.per_kill == [1]
    failures = ledger.failures()
    assert "1 lost" in failures
    assert "1 duplicated outside the crash window" in failures
    assert "1 FAILED" in failures
    assert "1 not terminal" in failures
    unexplained = next(f for f in ledger.findings if f.outcome == "unexplained")
    assert "email-api@+0.000s, smtp@+1.000s" in unexplained.detail
    assert not ledger.ok


def test_a_clean_run_prints_ok_and_one_json_line() -> None:
    ledger = _ledger()
    tally_items(ledger, [Item("email", "a", "SENT")], {"a": [Acceptance(1.0, "smtp")]}, {}, [])
    ledger.inbound.events = ledger.inbound.stored_once = 0

    assert ledger.ok, ledger.failures()
    assert report.table(ledger).splitlines()[-1] == "verdict: OK"
    line = report.json_line(ledger)
    assert "\n" not in line
    summary = json.loads(line)
    assert summary["ok"] is True
    assert summary["lost"] == 0
    assert summary["terminalAfterLastFaultS"] == 10.0


def test_slow_recovery_and_too_many_repeats_per_kill_fail() -> None:
    ledger = _ledger()
    ledger.timing.terminal_s = 75.0
    ledger.per_kill = [3]

    failures = " ".join(ledger.failures())
    assert "after the last fault" in failures
    assert "more than prefetch" in failures


def test_the_inbound_plan_duplicates_and_swaps_some_posts() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    plan = plan_inbound(500, random.Random(7), now)

    assert len({e.event_id for e in plan.events}) == 500
    assert len(plan.posts) == 500 + plan.duplicates
    assert {e.event_id for e in plan.posts} == {e.event_id for e in plan.events}
    assert 0.1 < plan.duplicates / 500 < 0.5  # 20% duplicated, half of those twice
    assert 0.05 < plan.out_of_order / 400 < 0.3  # 15% of the adjacent pairs swapped
    assert plan.posts != sorted(plan.posts, key=lambda e: e.timestamp)
    for event in plan.events:  # each duplicate comes after the first post of its event
        positions = [i for i, posted in enumerate(plan.posts) if posted == event]
        assert positions == sorted(positions)


def test_leaks_are_found_by_secret_token_and_jwt_shape(tmp_path: Path) -> None:
    log = tmp_path / "svc.1.log"
    token = "Zq3_secretTokenValue-0123456789abcdefghijklm"
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjaGFvcyJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    log.write_text(
        "\n".join(
            [
                '{"msg": "fine"}',
                '{"msg": "login", "password": "hunter2-is-long"}',
                f'{{"msg": "body: verify [[{token}]]"}}',
                f'{{"msg": "Authorization: Bearer {jwt}"}}',
            ]
        )
    )

    tally = find_leaks([log], {"email API password": "hunter2-is-long"}, [token])

    assert (tally.files, tally.lines, tally.leaking_lines, tally.secrets) == (1, 4, 3, 2)
    assert tally.examples == [
        "svc.1.log:2: email API password",
        "svc.1.log:3: per-recipient token",
        "svc.1.log:4: a JWT (bearer token)",
    ]
    assert all(token not in example for example in tally.examples)
