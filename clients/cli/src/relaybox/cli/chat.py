"""`relaybox chat tail`: a user's live chat events from the realtime gateway, one line each.

This is the realtime service's own client, not a second one: `relaybox.realtime.client`'s
StreamClient (tickets or bearer subprotocol, reconnect and resume, de-duplication, acks) and
`relaybox.realtime.tail`'s one-line printer. The CLI depends on relaybox-realtime for that; the
architecture test allows exactly these two modules (tests/unit/test_architecture.py). They are
imported when the command runs, so that every other command starts without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from relaybox.cli.http import DEFAULT_API_URL, CliFailure
from relaybox.cli.session import ApiUrl, JsonOutput, Output, Token, session

if TYPE_CHECKING:
    from relaybox.realtime.client import StreamRefused

app = typer.Typer(help="The messenger's live events.", no_args_is_help=True)


def refused_line(exc: StreamRefused) -> str:
    """A refusal in one line: the problem's `detail` (the API refusing a ticket) or the
    stream's `error`, else the body."""
    detail = exc.body
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        said = json.loads(exc.body)
        detail = str(said.get("detail") or said.get("error") or exc.body)
    return f"the stream refused the connection: {exc.status} {' '.join(detail.split())[:300]}"


@app.command("tail")
def tail_command(
    stream_url: Annotated[
        str | None,
        typer.Option(
            "--stream-url",
            envvar="RELAYBOX_STREAM_URL",
            help="The realtime gateway's stream (default: ws://127.0.0.1:3100/chat/stream, "
            "`make run`'s).",
            show_default=False,
        ),
    ] = None,
    bearer: Annotated[
        bool,
        typer.Option(
            "--bearer",
            help="Offer the token as the `bearer` subprotocol instead of asking the API for a "
            "single-use ticket per connection.",
        ),
    ] = False,
    device: Annotated[str | None, typer.Option(help="A registered device id of the user.")] = None,
    ack: Annotated[
        bool, typer.Option("--ack", help="Acknowledge messages (the sender sees DELIVERED).")
    ] = False,
    control: Annotated[
        bool, typer.Option("--control", help="Show hello / checkpoint / live frames too.")
    ] = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    json_output: JsonOutput = False,
) -> None:
    """Print the token's user's live chat events, one line each (--json: one JSON frame per
    line), until Ctrl-C. Reconnects and resumes by itself."""
    from relaybox.realtime.client import StreamRefused
    from relaybox.realtime.tail import DEFAULT_URL, printer, tail

    with session(api_url, token, json_output) as (api, out):
        assert token is not None  # session() refused a missing one
        show = _json_frames(out) if out.json_mode else printer(sys.stdout)
        work = tail(
            stream_url or DEFAULT_URL,
            token=token,
            api=None if bearer else api.base_url,
            device=device,
            ack=ack,
            control=control,
            show=show,
        )
        try:
            asyncio.run(work)
        except KeyboardInterrupt:
            out.note("stopped")
        except StreamRefused as exc:
            raise CliFailure(refused_line(exc)) from None


def _json_frames(out: Output) -> Callable[[dict[str, Any]], None]:
    def show(frame: dict[str, Any]) -> None:
        out.json_line(frame)

    return show
