"""`relaybox email ...`: queue an email, read the delivery log with today's totals, show one.

Endpoints (relaybox.api.emails.controller): POST /send (JSON: to, subject, text, html, from;
honours Idempotency-Key), GET /logs/email (page/limit/cursor, status, from/to, and
`stats.today`), GET /emails/{id}.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Any

import typer

from relaybox.cli import views
from relaybox.cli.http import DEFAULT_API_URL, Api
from relaybox.cli.session import ApiUrl, JsonOutput, Output, Token, session

app = typer.Typer(help="Single emails and the delivery log.", no_args_is_help=True)

EMAIL_STATUSES = ("PENDING", "SENDING", "SENT", "FAILED")
LOG_PATH = "/logs/email"


@app.command()
def send(
    to: Annotated[str, typer.Option(help="The recipient's address.", show_default=False)],
    subject: Annotated[str, typer.Option(help="One line.", show_default=False)],
    text: Annotated[str | None, typer.Option(help="The plain-text body.")] = None,
    html: Annotated[str | None, typer.Option(help="The HTML body (text, html or both).")] = None,
    sender: Annotated[
        str | None, typer.Option("--from", help="The sender; the API's default when absent.")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key", help="Running again with the same key answers the same email."
        ),
    ] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """Queue an email (202: stored PENDING with its outbox row; the consumer sends it)."""
    if text is None and html is None:
        raise typer.BadParameter("give --text, --html or both", param_hint="'--text'")
    body: dict[str, Any] = {"to": to, "subject": subject}
    body.update({k: v for k, v in (("text", text), ("html", html), ("from", sender)) if v})
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    with session(api_url, token, json_output) as (api, out):
        accepted = api.post("/send", body, headers=headers)
        if out.json_mode:
            out.json(accepted)
        else:
            out.say(f"email {accepted['id']} {accepted['status']} (to {to})")
            out.say(f"see it: relaybox email show {accepted['id']}")


def _log_page(api: Api, params: dict[str, Any], today: bool) -> dict[str, Any]:
    """A page of the log; `today`: from and to the API's today (its timezone's date; the local
    date is tried first and corrected once when the API's differs)."""
    if not today:
        found: dict[str, Any] = api.get(LOG_PATH, params)
        return found
    day = date.today().isoformat()
    found = api.get(LOG_PATH, {**params, "from": day, "to": day})
    theirs = found["stats"]["today"]["date"]
    if theirs != day:
        found = api.get(LOG_PATH, {**params, "from": theirs, "to": theirs})
    return found


def totals_line(stats: dict[str, Any]) -> str:
    t = stats["today"]
    return (
        f"today ({t['date']}, {t['timezone']}): {t['total']} total · {t['sent']} sent · "
        f"{t['failed']} failed · {t['pending']} pending"
    )


@app.command()
def log(
    status: Annotated[
        str | None, typer.Option(help=f"Only this status: {', '.join(EMAIL_STATUSES)}.")
    ] = None,
    today: Annotated[bool, typer.Option("--today", help="Only today's (the API's day).")] = False,
    page: Annotated[int, typer.Option(min=1, help="Page number.")] = 1,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Emails per page.")] = 20,
    cursor: Annotated[
        str | None, typer.Option(help="The page after this cursor (meta.nextCursor).")
    ] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """The delivery log, newest first, with today's totals (total, sent, failed, pending)."""
    wanted = None
    if status is not None:
        wanted = status.upper()
        if wanted not in EMAIL_STATUSES:
            raise typer.BadParameter(f"one of {', '.join(EMAIL_STATUSES)}", param_hint="'--status'")
    with session(api_url, token, json_output) as (api, out):
        params = {"status": wanted, "page": page, "limit": limit, "cursor": cursor}
        found = _log_page(api, params, today)
        if out.json_mode:
            out.json(found)
            return
        show_log(out, found)


def show_log(out: Output, found: dict[str, Any]) -> None:
    rows = (
        (
            views.cell(e["id"]),
            views.cell(e["to"]),
            views.cell(e["subject"]),
            views.status(e["status"]),
            views.cell(e["attempts"]),
            views.when(e.get("createdAt")),
            views.when(e.get("sentAt") or e.get("failedAt")),
            views.cell(e.get("error")),
        )
        for e in found["data"]
    )
    columns = ("id", "to", "subject", "status", "tries", "created", "sent/failed", "error")
    out.console.print(views.table("Email log", columns, rows))
    meta = found["meta"]
    out.say(f"{len(found['data'])} of {meta['total']}")
    if meta.get("nextCursor"):
        out.say(f"next page: --cursor {meta['nextCursor']}")
    out.say(totals_line(found["stats"]))


@app.command()
def show(
    email_id: Annotated[uuid.UUID, typer.Argument(help="The email's id.", show_default=False)],
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """One email with its bodies, attempts and provider message id."""
    with session(api_url, token, json_output) as (api, out):
        found = api.get(f"/emails/{email_id}")
        if out.json_mode:
            out.json(found)
            return
        names = ("id", "to", "from", "subject", "attempts", "providerMessageId", "error")
        rows = [(name, views.cell(found.get(name))) for name in names]
        rows.insert(4, ("status", views.status(found["status"])))
        for stamp in ("createdAt", "sentAt", "failedAt"):
            rows.append((stamp, views.when(found.get(stamp))))
        for part in ("text", "html"):
            if found.get(part):
                rows.append((part, views.cell(found[part])))
        out.console.print(views.pairs(rows))
