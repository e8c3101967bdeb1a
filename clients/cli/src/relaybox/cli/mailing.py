"""`relaybox mailing ...`: upload a CSV mailing list and follow it, list mailings, show one,
pause / resume / cancel / retry its failures, its invalid rows and its recipients.

The endpoints (relaybox.api.mailings.controller): POST /mailings (multipart `file`, `subject`,
`body`; honours Idempotency-Key), GET /mailings, GET /mailings/{id}, GET /mailings/{id}/errors,
GET /mailings/{id}/entries, POST /mailings/{id}/pause|resume|cancel|retry-failed.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from relaybox.cli import views
from relaybox.cli.http import DEFAULT_API_URL, Api
from relaybox.cli.progress import follow
from relaybox.cli.session import ApiUrl, JsonOutput, Output, Token, session

app = typer.Typer(help="Bulk mailings from a CSV list.", no_args_is_help=True)

KEY_PREFIX = "relaybox-cli-mailing-"
HASH_CHUNK = 1024 * 1024
INVALID_ROWS_SHOWN = 50
DEFAULT_INTERVAL_S = 1.0
MAILING_STATUSES = ("PARSING", "RUNNING", "PAUSED", "COMPLETED", "CANCELLED", "FAILED")
ENTRY_STATUSES = ("PENDING", "SENT", "FAILED", "CANCELLED")
STOPPED_BY_USER = 130  # the shell's code for Ctrl-C

MailingId = Annotated[uuid.UUID, typer.Argument(help="The mailing's id.", show_default=False)]
Interval = Annotated[
    float,
    typer.Option("--interval", min=0.1, help="Seconds between two polls while following."),
]
Limit = Annotated[int, typer.Option("--limit", min=1, max=500, help="Rows per page.")]
Cursor = Annotated[
    str | None, typer.Option("--cursor", help="The page after this cursor (meta.nextCursor).")
]
AllPages = Annotated[bool, typer.Option("--all", help="Every page (follows the cursors).")]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def upload_key(sha256: str, file_name: str, subject: str | None, body: str | None) -> str:
    """The Idempotency-Key of an upload: the file's sha256 with its name, subject and body (what
    the API fingerprints), so running the same command again answers the same mailing."""
    material = json.dumps([sha256, file_name, subject or "", body or ""])
    return KEY_PREFIX + hashlib.sha256(material.encode()).hexdigest()


def _choice(value: str | None, allowed: tuple[str, ...], option: str) -> str | None:
    if value is None:
        return None
    upper = value.upper()
    if upper not in allowed:
        raise typer.BadParameter(f"one of {', '.join(allowed)}", param_hint=f"'{option}'")
    return upper


# -- what a mailing looks like ------------------------------------------------------------------


def show_mailing(out: Output, detail: dict[str, Any]) -> None:
    c = detail["counts"]
    progress = detail.get("progress")
    rows = [
        ("mailing", f"{views.cell(detail['id'])}  {views.status(detail['status'])}"),
        ("file", f"{views.cell(detail.get('fileName'))} ({views.size(detail.get('fileBytes'))})"),
        ("subject", views.cell(detail.get("subject"))),
        (
            "rows",
            f"{c['rows']}: {c['valid']} valid, {c['invalid']} invalid, "
            f"{c['duplicates']} duplicates",
        ),
        (
            "recipients",
            f"sent {c['sent']} · failed {c['failed']} · pending {c['pending']} · "
            f"cancelled {c['cancelled']}"
            + (f"  ({100 * progress:.1f}% done)" if progress is not None else ""),
        ),
        ("created", views.when(detail.get("createdAt"))),
        ("started", views.when(detail.get("startedAt"))),
        ("finished", views.when(detail.get("finishedAt"))),
    ]
    if detail.get("etaSeconds") is not None:
        rows.append(
            ("eta", f"{views.when(detail.get('eta'))} (in {views.duration(detail['etaSeconds'])})")
        )
    if detail.get("error"):
        rows.append(("error", f"[red]{views.cell(detail['error'])}[/]"))
    out.human.print(views.pairs(rows))


def pages(api: Api, path: str, params: dict[str, Any], every: bool) -> Iterator[dict[str, Any]]:
    """The pages of a cursor-paged list: one, or every one with `every`."""
    cursor = params.get("cursor")
    while True:
        page: dict[str, Any] = api.get(path, {**params, "cursor": cursor})
        yield page
        cursor = page["meta"].get("nextCursor")
        if not every or not cursor:
            return


def invalid_rows_table(rows: list[dict[str, Any]], title: str) -> Table:
    return views.table(
        title,
        ("row", "value", "reason"),
        (
            (views.cell(r["rowNumber"]), views.cell(r["value"]), views.cell(r["reason"]))
            for r in rows
        ),
    )


def show_invalid_rows(api: Api, out: Output, detail: dict[str, Any]) -> list[dict[str, Any]]:
    """The invalid rows at the end of an upload: a table of the first ones (every one in JSON)."""
    invalid = int(detail["counts"]["invalid"])
    if not invalid:
        return []
    path = f"/mailings/{detail['id']}/errors"
    if out.json_mode:
        return [row for page in pages(api, path, {"limit": 500}, True) for row in page["data"]]
    first = api.get(path, {"limit": INVALID_ROWS_SHOWN})["data"]
    out.console.print(invalid_rows_table(first, f"Invalid rows ({invalid})"))
    if invalid > len(first):
        out.say(f"… and {invalid - len(first)} more: relaybox mailing errors {detail['id']} --all")
    return list(first)


# -- upload and follow -----------------------------------------------------------------------


def follow_to_the_end(api: Api, out: Output, mailing_id: str, interval_s: float) -> dict[str, Any]:
    """Follow until the mailing ends; Ctrl-C stops following only (exit 130)."""
    try:
        return follow(api, mailing_id, out.human, err=out.json_mode, interval_s=interval_s)
    except KeyboardInterrupt:
        out.note(
            f"stopped following; mailing {mailing_id} goes on (Ctrl-C stops the following, not "
            f"the mailing). Follow again: relaybox mailing status {mailing_id} --follow; "
            f"stop it: relaybox mailing cancel {mailing_id}"
        )
        raise typer.Exit(STOPPED_BY_USER) from None


def finish(api: Api, out: Output, detail: dict[str, Any]) -> None:
    """After following: the invalid rows, the outcome; exit 1 unless COMPLETED."""
    invalid = show_invalid_rows(api, out, detail)
    if out.json_mode:
        out.json({**detail, "invalidRows": invalid})
    else:
        show_mailing(out, detail)
    if detail["status"] != "COMPLETED":
        reason = f": {detail['error']}" if detail.get("error") else ""
        out.note(f"mailing {detail['id']} ended {detail['status']}{reason}")
        raise typer.Exit(1)


@app.command()
def upload(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="The CSV list (an `email` column)."
        ),
    ],
    subject: Annotated[
        str | None, typer.Option(help="One line; the API's default when absent.")
    ] = None,
    body: Annotated[
        str | None,
        typer.Option(help="The text, holding {token} (each recipient's); the default if absent."),
    ] = None,
    follow_it: Annotated[
        bool,
        typer.Option(
            "--follow", help="Show live progress until the mailing ends, then its invalid rows."
        ),
    ] = False,
    interval: Interval = DEFAULT_INTERVAL_S,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            help="Instead of the key derived from the file, subject and body (another key "
            "starts the same list over, e.g. after a cancel).",
        ),
    ] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """Upload a mailing list and start the mailing (idempotent: the same file, subject and body
    again answer the same mailing).

    With --follow: a live progress bar (rows parsed, then sent / failed / pending, rate, ETA)
    until the mailing ends, then the invalid rows; exit 0 when COMPLETED, 1 when it ended
    CANCELLED or FAILED. Ctrl-C stops following (exit 130), not the mailing.
    """
    with session(api_url, token, json_output) as (api, out):
        key = idempotency_key or upload_key(file_sha256(file), file.name, subject, body)
        form = {k: v for k, v in (("subject", subject), ("body", body)) if v is not None}
        with file.open("rb") as f:
            response = api.request(
                "POST",
                "/mailings",
                files={"file": (file.name, f, "text/csv")},
                data=form,
                headers={"Idempotency-Key": key},
            )
        created: dict[str, Any] = response.json()
        mailing_id = str(created["id"])
        again = (
            " (this list was uploaded already: the same mailing)"
            if response.status_code == 200
            else ""
        )
        out.say(f"mailing {mailing_id} {created['status']}{again}")
        if not follow_it:
            detail = api.get(f"/mailings/{mailing_id}")
            if out.json_mode:
                out.json(detail)
            else:
                show_mailing(out, detail)
                out.say(f"follow it: relaybox mailing status {mailing_id} --follow")
            return
        finish(api, out, follow_to_the_end(api, out, mailing_id, interval))


# -- reading -------------------------------------------------------------------------------------


@app.command("list")
def list_mailings(
    status: Annotated[
        str | None, typer.Option(help=f"Only this status: {', '.join(MAILING_STATUSES)}.")
    ] = None,
    page: Annotated[int, typer.Option(min=1, help="Page number (page/limit paging).")] = 1,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Mailings per page.")] = 20,
    cursor: Cursor = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """The mailings, newest first."""
    wanted = _choice(status, MAILING_STATUSES, "--status")
    with session(api_url, token, json_output) as (api, out):
        found = api.get(
            "/mailings", {"status": wanted, "page": page, "limit": limit, "cursor": cursor}
        )
        if out.json_mode:
            out.json(found)
            return
        rows = (
            (
                views.cell(m["id"]),
                views.status(m["status"]),
                views.cell(m.get("fileName")),
                views.cell(m["counts"]["valid"]),
                views.cell(m["counts"]["invalid"]),
                views.cell(m["counts"]["sent"]),
                views.cell(m["counts"]["failed"]),
                views.cell(m["counts"]["pending"]),
                "-" if m.get("progress") is None else f"{100 * m['progress']:.1f}%",
                views.when(m.get("createdAt")),
            )
            for m in found["data"]
        )
        columns = ("id", "status", "file", "valid", "invalid", "sent", "failed", "pending")
        out.console.print(views.table(None, (*columns, "done", "created"), rows))
        meta = found["meta"]
        out.say(f"{len(found['data'])} of {meta['total']}")
        if meta.get("nextCursor"):
            out.say(f"next page: --cursor {meta['nextCursor']}")


@app.command()
def status(
    mailing_id: MailingId,
    follow_it: Annotated[
        bool, typer.Option("--follow", help="Show live progress until the mailing ends.")
    ] = False,
    interval: Interval = DEFAULT_INTERVAL_S,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """One mailing with its progress (--follow: live until it ends, as `upload --follow`)."""
    with session(api_url, token, json_output) as (api, out):
        if follow_it:
            finish(api, out, follow_to_the_end(api, out, str(mailing_id), interval))
            return
        detail = api.get(f"/mailings/{mailing_id}")
        if out.json_mode:
            out.json(detail)
        else:
            show_mailing(out, detail)


@app.command()
def errors(
    mailing_id: MailingId,
    limit: Limit = 50,
    cursor: Cursor = None,
    every: AllPages = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """The file's invalid rows: row number, value and reason."""
    with session(api_url, token, json_output) as (api, out):
        path = f"/mailings/{mailing_id}/errors"
        found = list(pages(api, path, {"limit": limit, "cursor": cursor}, every))
        rows = [row for page in found for row in page["data"]]
        following = found[-1]["meta"].get("nextCursor")
        if out.json_mode:
            out.json({"data": rows, "meta": {"limit": limit, "nextCursor": following}})
            return
        out.console.print(invalid_rows_table(rows, f"Invalid rows of mailing {mailing_id}"))
        if following:
            out.say(f"next page: --cursor {following} (or --all)")


@app.command()
def entries(
    mailing_id: MailingId,
    status: Annotated[
        str | None, typer.Option(help=f"Only this state: {', '.join(ENTRY_STATUSES)}.")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    every: AllPages = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """The mailing's recipients in file order, with their delivery state."""
    wanted = _choice(status, ENTRY_STATUSES, "--status")
    with session(api_url, token, json_output) as (api, out):
        path = f"/mailings/{mailing_id}/entries"
        found = list(pages(api, path, {"limit": limit, "cursor": cursor, "status": wanted}, every))
        rows = [row for page in found for row in page["data"]]
        following = found[-1]["meta"].get("nextCursor")
        if out.json_mode:
            out.json({"data": rows, "meta": {"limit": limit, "nextCursor": following}})
            return
        table = views.table(
            f"Recipients of mailing {mailing_id}",
            ("row", "email", "status", "sent", "failed", "error"),
            (
                (
                    views.cell(r["rowNumber"]),
                    views.cell(r["email"]),
                    views.status(r["status"]),
                    views.when(r.get("sentAt")),
                    views.when(r.get("failedAt")),
                    views.cell(r.get("error")),
                )
                for r in rows
            ),
        )
        out.console.print(table)
        if following:
            out.say(f"next page: --cursor {following} (or --all)")


# -- controls ------------------------------------------------------------------------------------


def _control(
    action: str, mailing_id: uuid.UUID, api_url: str, token: str | None, json_mode: bool
) -> None:
    with session(api_url, token, json_mode) as (api, out):
        detail = api.post(f"/mailings/{mailing_id}/{action}")
        if out.json_mode:
            out.json(detail)
        else:
            show_mailing(out, detail)


@app.command()
def pause(
    mailing_id: MailingId,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """Pause: PARSING or RUNNING → PAUSED (nothing more is sent until resumed)."""
    _control("pause", mailing_id, api_url, token, json_output)


@app.command()
def resume(
    mailing_id: MailingId,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """Resume: PAUSED → RUNNING (or PARSING if it was paused before its parse ended)."""
    _control("resume", mailing_id, api_url, token, json_output)


@app.command()
def cancel(
    mailing_id: MailingId,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """Cancel: PARSING, RUNNING or PAUSED → CANCELLED (recipients not sent yet are cancelled)."""
    _control("cancel", mailing_id, api_url, token, json_output)


@app.command("retry-failed")
def retry_failed(
    mailing_id: MailingId,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """Send the failed recipients again (a COMPLETED mailing runs again)."""
    _control("retry-failed", mailing_id, api_url, token, json_output)
