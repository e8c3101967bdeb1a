"""The `relaybox` command: its groups, and the one place a failure becomes one line and an exit
status (1 for a failure, 2 for bad usage, 130 when following is stopped with Ctrl-C)."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from relaybox.cli import chat, dead_letters, email, mailing
from relaybox.cli.http import CliFailure
from relaybox.cli.token import token


class RelayboxGroup(TyperGroup):
    """Reports a `CliFailure` from any command as one line on stderr and exits with its code
    (with `--json`, `session()` has put the problem document on stdout already)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CliFailure as failure:
            typer.echo(f"error: {failure.line}", err=True)
            raise typer.Exit(failure.exit_code) from None


app = typer.Typer(
    cls=RelayboxGroup,
    name="relaybox",
    help="relaybox's command-line client: talks to the API over HTTP (--api-url or "
    "RELAYBOX_API_URL, a bearer token from --token or RELAYBOX_TOKEN). Every command takes "
    "--json for scripts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(mailing.app, name="mailing")
app.add_typer(email.app, name="email")
app.add_typer(chat.app, name="chat")
app.add_typer(dead_letters.app, name="dead-letters")
app.command("token")(token)


def main() -> None:
    """The console script `relaybox`."""
    app()
