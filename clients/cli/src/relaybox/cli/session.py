"""What every command shares: the `--api-url`, `--token` and `--json` options, the API client
they make, and the two ways of printing (tables for people, JSON for scripts).

Printing rules: JSON and one-line messages go through `typer.echo` (never wrapped); tables and
the progress bar through rich consoles. With `--json`, stdout holds JSON only and anything for
people (progress, hints) goes to stderr.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Console

from relaybox.cli.http import Api, CliFailure

ApiUrl = Annotated[
    str,
    typer.Option(
        "--api-url",
        envvar="RELAYBOX_API_URL",
        help="The API's base URL.",
        rich_help_panel="Connection",
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="RELAYBOX_TOKEN",
        help="A bearer token (JWT); `relaybox token` prints a dev one.",
        show_default=False,
        rich_help_panel="Connection",
    ),
]
JsonOutput = Annotated[
    bool,
    typer.Option("--json", help="Print JSON (the API's answer) on stdout, for scripts."),
]


@dataclass
class Output:
    """Where a command prints: `json_mode` picks JSON on stdout over tables."""

    json_mode: bool
    console: Console = field(default_factory=lambda: Console(highlight=False))
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))

    @property
    def human(self) -> Console:
        """The console for what people read: stderr when stdout is for JSON."""
        return self.err if self.json_mode else self.console

    def json(self, document: Any) -> None:
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))

    def json_line(self, document: Any) -> None:
        typer.echo(json.dumps(document, separators=(",", ":"), ensure_ascii=False))

    def say(self, text: str) -> None:
        """One line for people, never wrapped (stdout, or stderr in `--json` mode)."""
        typer.echo(text, err=self.json_mode)

    def note(self, text: str) -> None:
        """One line on stderr (warnings, what happened on exit)."""
        typer.echo(text, err=True)


@contextmanager
def session(api_url: str, token: str | None, json_mode: bool) -> Iterator[tuple[Api, Output]]:
    """The API client and the output of one command; a missing token is bad usage (exit 2)."""
    if not token:
        raise typer.BadParameter(
            "a bearer token is required: pass --token or set RELAYBOX_TOKEN "
            "(`relaybox token` prints a dev one)",
            param_hint="'--token'",
        )
    out = Output(json_mode)
    with Api(api_url, token) as api:
        try:
            yield api, out
        except CliFailure as failure:
            if json_mode and failure.document is not None:
                out.json(failure.document)
            raise
