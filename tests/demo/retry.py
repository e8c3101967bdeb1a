"""Scene 3: a retried send: the mock email API fails the next call with a 503, one email goes
through `POST /send`, the consumer retries it through a retry tier, and it ends SENT."""

from __future__ import annotations

import time

import httpx

from tests.demo.http import StateLog, call, ledger, poll
from tests.demo.report import Section, seconds
from tests.demo.stack import RETRY_DELAYS_MS

TIMEOUT_S = 90.0
FAIL_STATUS = 503


TITLE = "3. A retried send"


async def run(section: Section, api: httpx.AsyncClient, mock: httpx.AsyncClient) -> None:
    await call(
        mock,
        "POST",
        "/email-api/_mock/config",
        json={"failNext": 1, "failStatus": FAIL_STATUS},
    )
    section.say(
        f"- The mock email API answers its next call {FAIL_STATUS} "
        f'(`POST /email-api/_mock/config {{"failNext": 1, "failStatus": {FAIL_STATUS}}}`).'
    )
    started = time.monotonic()
    accepted = await call(
        api,
        "POST",
        "/send",
        expect=(202,),
        json={
            "to": "retry-demo@example.com",
            "subject": "relaybox demo: a send that is retried",
            "text": "The first call fails with a 503; the retry tier sends it again.",
        },
        headers={"Idempotency-Key": f"demo-retry-{int(time.time())}"},
    )
    email_id = accepted["id"]
    states = StateLog()

    def seen(email: dict[str, object]) -> None:
        error = f", {email['error']}" if email["error"] else ""
        states.note(f"{email['status']} (attempts {email['attempts']}{error})")

    final = await poll(
        lambda: call(api, "GET", f"/emails/{email_id}"),
        lambda e: e["status"] in ("SENT", "FAILED"),
        TIMEOUT_S,
        interval_s=0.1,
        seen=seen,
    )
    took = time.monotonic() - started
    entry = (await ledger(mock, "emailApi")).get(email_id, {})
    section.say(
        f"- `POST /send` → 202 `{email_id}`; `GET /emails/{{id}}` polled: {states}; "
        f"final **{final['status']}** after {seconds(took)}, attempts {final['attempts']}, "
        f"sentAt {final['sentAt']}. The retry waited in the first retry tier "
        f"({RETRY_DELAYS_MS[0] / 1000:g} s for the demo; 5 s by default)."
    )
    stats = await call(mock, "GET", "/email-api/_mock/stats")
    section.say(
        f"- The mock's ledger for its idempotency key (the email id): {entry.get('calls', 0)} "
        f"calls, {len(entry.get('acceptedAt', []))} accepted; its refusals so far: "
        f"{stats['rejected']}."
    )
    section.check("the retried email ended SENT", final["status"] == "SENT", final["status"])
    section.check(
        "two attempts: the 503, then the accepted one",
        final["attempts"] == 2,
        f"attempts {final['attempts']}",
    )
    section.check(
        "the provider saw 2 calls and accepted 1 (sent once)",
        entry.get("calls") == 2 and len(entry.get("acceptedAt", [])) == 1,
        f"{entry.get('calls', 0)} calls, {len(entry.get('acceptedAt', []))} accepted",
    )
