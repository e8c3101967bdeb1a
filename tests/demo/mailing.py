"""Scene 1: the fixture mailing list through the mock email API at a raised limit, followed to
the end with `GET /mailings/{id}`; the invalid rows; the mock's ledger: each recipient once."""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.demo.http import Json, StateLog, call, ledger, poll
from tests.demo.report import Section, seconds

SUBJECT = "relaybox demo: complete your registration"
BODY = "Thank you for signing up. Please verify your token {token} to continue."
FINAL = {"COMPLETED", "CANCELLED", "FAILED"}
TIMEOUT_S = 240.0  # generous: a loaded 2-core machine; the mailing itself takes seconds


async def raise_limit(mock: httpx.AsyncClient, rate: float) -> tuple[Json, Json]:
    """The contract's limit (as the mock starts) and the demo's (`POST /email-api/_mock/config`)."""
    before = await call(mock, "GET", "/email-api/_mock/config")
    after = await call(
        mock,
        "POST",
        "/email-api/_mock/config",
        json={"rateLimitPerWindow": int(rate), "rateWindowS": 1},
    )
    return before, after


async def pages(api: httpx.AsyncClient, url: str) -> list[Json]:
    """Every item of a cursor-paginated list."""
    items: list[Json] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = await call(api, "GET", url, params=params)
        items += page["data"]
        cursor = page["meta"].get("nextCursor")
        if not cursor:
            return items


def _token_of(body: str) -> str | None:
    before, after = BODY.split("{token}")
    match = re.fullmatch(re.escape(before) + r"(.+)" + re.escape(after), body)
    return match.group(1) if match else None


TITLE = "1. Mailing: the fixture list through the mock email API"


async def run(
    section: Section, api: httpx.AsyncClient, mock: httpx.AsyncClient, fixture: Path, rate: float
) -> list[str]:
    """The scene; the per-recipient tokens the mock received (the logs are searched for them)."""
    before, after = await raise_limit(mock, rate)
    section.say(
        f"- Email provider `http-api` (the token-authenticated email API of the contract), "
        f"mock-meta's. Its limit, {before['rateLimitPerWindow']} per {before['rateWindowS']:g} s "
        f"as the contract says, raised for the demo to {after['rateLimitPerWindow']} per "
        f"{after['rateWindowS']:g} s (`POST /email-api/_mock/config`); the consumer's global "
        f"limiter: `RELAYBOX_EMAIL_API__RATE_PER_SECOND={rate:g}`."
    )
    content = await asyncio.to_thread(fixture.read_bytes)
    started = time.monotonic()
    created = await call(
        api,
        "POST",
        "/mailings",
        expect=(202,),
        files={"file": (fixture.name, content, "text/csv")},
        data={"subject": SUBJECT, "body": BODY},
        headers={"Idempotency-Key": "demo-" + hashlib.sha256(content).hexdigest()[:32]},
    )
    mailing_id = created["id"]
    states = StateLog()
    progress: list[str] = []

    def seen(m: Json) -> None:
        states.note(m["status"])
        counts = m["counts"]
        line = f"{m['status']} sent {counts['sent']}/{counts['valid']}"
        if not progress or progress[-1] != line:
            progress.append(line)
            print(f"  mailing {line}", file=sys.stderr, flush=True)

    final = await poll(
        lambda: call(api, "GET", f"/mailings/{mailing_id}"),
        lambda m: m["status"] in FINAL,
        TIMEOUT_S,
        interval_s=0.5,
        seen=seen,
    )
    took = time.monotonic() - started
    counts = final["counts"]
    errors = await pages(api, f"/mailings/{mailing_id}/errors")
    entries = await pages(api, f"/mailings/{mailing_id}/entries")
    section.say(
        f"- `{fixture.name}` ({len(content):,} bytes) uploaded: mailing `{mailing_id}`, "
        f"status **{final['status']}** after {seconds(took)}: {states}."
    )
    section.table(
        ["rows", "valid", "invalid", "duplicates", "sent", "failed", "pending", "cancelled"],
        [
            [counts[k] for k in ("rows", "valid", "invalid", "duplicates")]
            + [counts[k] for k in ("sent", "failed", "pending", "cancelled")]
        ],
    )
    section.check("the mailing ended COMPLETED", final["status"] == "COMPLETED", final["status"])
    lines = [line for line in content.decode("utf-8-sig").splitlines()[1:] if line.strip()]
    section.check(
        "every row of the file counted: valid + invalid + duplicates = the rows after the header",
        counts["rows"] == len(lines) == counts["valid"] + counts["invalid"] + counts["duplicates"],
        f"{counts['rows']} counted, {len(lines)} in the file",
    )
    section.check(
        "every valid recipient SENT, none failed or pending",
        counts["sent"] == counts["valid"] > 0 and counts["failed"] == counts["pending"] == 0,
        f"sent {counts['sent']}, failed {counts['failed']}, pending {counts['pending']}",
    )
    _invalid_rows(section, errors, counts)
    return await _ledger(section, mock, entries, final)


def _invalid_rows(section: Section, errors: list[Json], counts: Json) -> None:
    section.say(f"Invalid rows (`GET /mailings/{{id}}/errors`): {len(errors)}")
    section.table(
        ["row", "value", "reason"],
        [[e["rowNumber"], f"`{e['value']}`", e["reason"]] for e in errors],
    )
    section.check(
        "the invalid rows listed are the ones counted",
        len(errors) == counts["invalid"] and counts["invalid"] > 0,
        f"{len(errors)} listed, {counts['invalid']} counted",
    )


async def _ledger(
    section: Section, mock: httpx.AsyncClient, entries: list[Json], final: Json
) -> list[str]:
    """Each recipient the API says SENT was accepted by the mock exactly once, under one key;
    the per-recipient tokens the mock received."""
    records = [
        r
        for r in (await call(mock, "GET", "/email-api/_mock/messages"))["data"]
        if r["subject"] == SUBJECT
    ]
    calls = await ledger(mock, "emailApi")
    stats = await call(mock, "GET", "/email-api/_mock/stats")
    by_recipient: dict[str, list[Json]] = {}
    for record in records:
        by_recipient.setdefault(record["to"].casefold(), []).append(record)
    keys = [r.get("idempotencyKey") for r in records]
    per_key = {key: calls.get(key or "", {}) for key in keys}
    accepted = sorted(t for entry in per_key.values() for t in entry.get("acceptedAt", []))
    span = accepted[-1] - accepted[0] if len(accepted) > 1 else None
    rate = f", {(len(accepted) - 1) / span:.1f}/s" if span else ""
    section.say(
        "The mock email API's side (`GET /ledger` → `emailApi`, keyed by the `Idempotency-Key` "
        f"the consumer sends, the email's id; `GET /email-api/_mock/messages`): {len(records)} "
        f"emails accepted for {len(by_recipient)} recipients under {len(set(keys))} keys, "
        f"{sum(e.get('calls', 0) for e in per_key.values())} calls in all; first to last "
        f"acceptance {seconds(span)}{rate}; refused: {stats['rejected'] or 'none'} "
        f"(429: {stats['rateLimited']}); most accepted in one 1 s window: "
        f"{stats['maxObservedPerWindow']}."
    )
    sent = sorted((e for e in entries if e["status"] == "SENT"), key=lambda e: e["rowNumber"])
    rows = [_ledger_row(e, by_recipient.get(e["email"].casefold(), []), calls) for e in sent]
    section.table(
        ["emails accepted per recipient", "recipients"],
        sorted(Counter(row[2] for row in rows).items()),
    )
    section.details(
        f"The ledger, recipient by recipient ({len(rows)})",
        ["row", "recipient", "emails accepted", "idempotency key", "calls", "accepted calls"],
        rows,
    )
    _ledger_checks(section, rows, records, by_recipient, keys, per_key, final)
    return [t for t in (_token_of(r["body"]) for r in records) if t]


def _ledger_row(entry: Json, records: list[Json], calls: dict[str, Json]) -> list[object]:
    keys = [r.get("idempotencyKey") or "" for r in records]
    ledger_calls = [calls.get(k, {}) for k in keys]
    return [
        entry["rowNumber"],
        entry["email"],
        len(records),
        ", ".join(f"`{k}`" for k in keys) or "-",
        sum(c.get("calls", 0) for c in ledger_calls),
        sum(len(c.get("acceptedAt", [])) for c in ledger_calls),
    ]


def _ledger_checks(
    section: Section,
    rows: list[list[object]],
    records: list[Json],
    by_recipient: dict[str, list[Json]],
    keys: list[str | None],
    per_key: dict[str | None, Json],
    final: Json,
) -> None:
    recipients = {str(row[1]).casefold() for row in rows}
    section.check(
        f"each of {len(rows)} recipients mailed exactly once (the mock's ledger)",
        len(rows) == final["counts"]["sent"]
        and all(row[2] == 1 and row[5] == 1 for row in rows)
        and set(by_recipient) == recipients,
        f"{len(rows)} SENT by the API, {len(by_recipient)} recipients and {len(records)} emails "
        f"accepted by the mock; once each: {all(row[2] == 1 for row in rows)}; the same "
        f"recipients: {set(by_recipient) == recipients}",
    )
    accepted_per_key = Counter(len(entry.get("acceptedAt", [])) for entry in per_key.values())
    section.check(
        "each email accepted once under its own idempotency key",
        None not in keys and len(set(keys)) == len(keys) and set(accepted_per_key) == {1},
        f"keys accepted once: {accepted_per_key.get(1, 0)} of {len(keys)}",
    )
    tokens = [_token_of(r["body"]) for r in records]
    section.check(
        "each recipient got a token of its own (the `{token}` placeholder replaced)",
        None not in tokens and "{token}" not in tokens and len(set(tokens)) == len(tokens),
        f"{len(set(tokens))} distinct tokens in {len(tokens)} emails",
    )
