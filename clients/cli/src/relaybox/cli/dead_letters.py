"""`relaybox dead-letters ...`: the operators' dead-letter office (scope `admin`).

Endpoints (relaybox.api.deadletters.controller): GET /admin/dead-letters (route, status, since,
page/limit/cursor), GET /admin/dead-letters/{id}, POST /admin/dead-letters/replay and /discard
with `{"ids": [...]}` or a filter over the open ones (`route`, `since`, `limit`), answering
`{"replayed"|"discarded": n, "results": [{id, outcome, reason}], "more": bool}` (a 409 problem
when ids were given and none could be).
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

import typer

from relaybox.cli import views
from relaybox.cli.http import DEFAULT_API_URL
from relaybox.cli.session import ApiUrl, JsonOutput, Output, Token, session

app = typer.Typer(
    help="Messages that died, for operators (scope admin): inspect, replay, discard.",
    no_args_is_help=True,
)

PATH = "/admin/dead-letters"
STATUSES = ("open", "replayed", "discarded")
ERROR_WIDTH = 80

Since = Annotated[
    str | None,
    typer.Option(help="Died (last) at or after this date (UTC, YYYY-MM-DD) or ISO date-time."),
]
Route = Annotated[
    str | None,
    typer.Option(help="The route they died on: email.send, meta.send, mailing.parse, ..."),
]
Ids = Annotated[
    list[uuid.UUID] | None,
    typer.Argument(help="Dead letter ids (or select the open ones with --route / --since).",
                   show_default=False),
]  # fmt: skip
SelectionLimit = Annotated[
    int | None,
    typer.Option("--limit", min=1, max=1000, help="With a filter: at most this many."),
]


def _clip(text: str | None, width: int = ERROR_WIDTH) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return views.cell(text if len(text) <= width else text[: width - 1] + "…")


@app.command("list")
def list_letters(
    route: Route = None,
    status: Annotated[str | None, typer.Option(help="open, replayed or discarded.")] = None,
    since: Since = None,
    page: Annotated[int, typer.Option(min=1, help="Page number.")] = 1,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Letters per page.")] = 20,
    cursor: Annotated[
        str | None, typer.Option(help="The page after this cursor (meta.nextCursor).")
    ] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """Dead letters, the most recent death first."""
    if status is not None and status.lower() not in STATUSES:
        raise typer.BadParameter(f"one of {', '.join(STATUSES)}", param_hint="'--status'")
    with session(api_url, token, json_output) as (api, out):
        params = {
            "route": route,
            "status": status.lower() if status else None,
            "since": since,
            "page": page,
            "limit": limit,
            "cursor": cursor,
        }
        found = api.get(PATH, params)
        if out.json_mode:
            out.json(found)
            return
        rows = (
            (
                views.cell(d["id"]),
                views.cell(d["route"]),
                views.status(d["status"]),
                views.cell(d.get("rowId")),
                views.cell(d["attempts"]),
                views.cell(d["count"]),
                views.when(d.get("lastSeenAt")),
                _clip(d.get("lastError")),
            )
            for d in found["data"]
        )
        columns = ("id", "route", "status", "row", "tries", "deaths", "last died", "last error")
        out.console.print(views.table("Dead letters", columns, rows))
        meta = found["meta"]
        out.say(f"{len(found['data'])} of {meta['total']}")
        if meta.get("nextCursor"):
            out.say(f"next page: --cursor {meta['nextCursor']}")


@app.command()
def show(
    letter_id: Annotated[
        uuid.UUID, typer.Argument(help="The dead letter's id.", show_default=False)
    ],
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """One dead letter: what it carried, why it died, and what was done with it."""
    with session(api_url, token, json_output) as (api, out):
        found = api.get(f"{PATH}/{letter_id}")
        if out.json_mode:
            out.json(found)
            return
        rows = [
            ("id", views.cell(found["id"])),
            ("route", views.cell(found["route"])),
            ("status", views.status(found["status"])),
            ("row", views.cell(found.get("rowId"))),
            ("attempts", views.cell(found["attempts"])),
            ("deaths", views.cell(found["count"])),
            ("first died", views.when(found.get("firstSeenAt"))),
            ("last died", views.when(found.get("lastSeenAt"))),
            ("replayed", views.when(found.get("replayedAt"))),
            ("discarded", views.when(found.get("discardedAt"))),
            ("last error", views.cell(found.get("lastError"))),
            ("payload", views.cell(json.dumps(found.get("payload"), ensure_ascii=False))),
            ("headers", views.cell(json.dumps(found.get("headers"), ensure_ascii=False))),
        ]
        out.console.print(views.pairs(rows))


def _selection(
    ids: list[uuid.UUID] | None, route: str | None, since: str | None, limit: int | None
) -> dict[str, Any]:
    """The request body: the ids, or the filter; both or neither is bad usage (exit 2)."""
    by_filter = route is not None or since is not None
    if bool(ids) == by_filter:
        raise typer.BadParameter(
            "give dead letter ids, or --route and/or --since (not both)", param_hint="'IDS'"
        )
    if ids:
        if limit is not None:
            raise typer.BadParameter("--limit goes with --route / --since", param_hint="'--limit'")
        return {"ids": [str(i) for i in ids]}
    body: dict[str, Any] = {"route": route, "since": since, "limit": limit}
    return {k: v for k, v in body.items() if v is not None}


def _act(action: str, done: str, selection: dict[str, Any], out: Output, report: Any) -> None:
    """Print what happened to each selected letter; exit 1 when any was refused."""
    if out.json_mode:
        out.json(report)
    else:
        results = report["results"]
        rows = (
            (views.cell(r["id"]), views.status(r["outcome"].upper()), views.cell(r.get("reason")))
            for r in results
        )
        if results:
            out.console.print(views.table(None, ("id", "outcome", "reason"), rows))
        out.say(f"{done} {report[done]} of {len(results)}")
        if report.get("more"):
            out.say(f"more letters match: run `relaybox dead-letters {action}` again")
    refused = sum(1 for r in report["results"] if r["outcome"] == "refused")
    if refused:
        out.note(f"{refused} refused (see the reasons)")
        raise typer.Exit(1)


@app.command()
def replay(
    ids: Ids = None,
    route: Route = None,
    since: Since = None,
    limit: SelectionLimit = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """Replay dead letters: each one's row goes back where a retry starts, with a new outbox row,
    in one transaction (never sent twice). Exit 1 when any was refused (the reason is shown)."""
    selection = _selection(ids, route, since, limit)
    with session(api_url, token, json_output) as (api, out):
        _act("replay", "replayed", selection, out, api.post(f"{PATH}/replay", selection))


@app.command()
def discard(
    ids: Ids = None,
    route: Route = None,
    since: Since = None,
    limit: SelectionLimit = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """Discard dead letters (kept, marked discarded, never replayed). Exit 1 when any was
    refused."""
    selection = _selection(ids, route, since, limit)
    with session(api_url, token, json_output) as (api, out):
        _act("discard", "discarded", selection, out, api.post(f"{PATH}/discard", selection))
