"""`python -m relaybox.realtime tail`: a user's live chat events in the terminal, one line each,
until Ctrl-C — the quickest way to see the messenger work.

```
python -m relaybox.realtime tail --sub alice --tenant dev                 # bearer subprotocol
python -m relaybox.realtime tail --sub alice --api http://127.0.0.1:3000  # a ticket per connect
```

Without `--token` it signs a development token for `--sub` with the configured secret
(`RELAYBOX_AUTH__JWT_SECRET`, the tenant in `RELAYBOX_AUTH__TENANT_CLAIM` unless that is `sub`).
With `--api` it connects with a fresh ticket from `POST /chat/stream-tickets` each time, else
with the token as the `bearer` subprotocol. It reconnects and resumes by itself (the client of
`relaybox.realtime.client`); it acknowledges messages only with `--ack` (an ack marks the
user's copies DELIVERED).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

from relaybox.common.auth import AuthSettings, sign_bearer
from relaybox.realtime.client import StreamClient, StreamRefused, ticket_source
from relaybox.realtime.settings import RealtimeSettings

try:  # optional: colours
    from rich.console import Console
    from rich.markup import escape
except ImportError:  # pragma: no cover - plain text then
    Console = None  # type: ignore[assignment,misc]

DEFAULT_URL = "ws://127.0.0.1:3100/chat/stream"
DEV_SCOPES = ("chat:read", "chat:write")
TEXT_WIDTH = 80


def dev_token(
    sub: str,
    tenant: str | None = None,
    *,
    auth: AuthSettings | None = None,
    ttl_s: float = 3600.0,
    scopes: Sequence[str] = DEV_SCOPES,
) -> str:
    """A bearer token for `sub` (chat scopes) signed with the configured secret; `tenant` goes
    into the tenant claim (when the claim is not `sub`; default: `sub`)."""
    settings = auth or _configured_auth()
    return sign_bearer(settings, sub, scopes, ttl_s=ttl_s, tenant=tenant)


def _configured_auth() -> AuthSettings:
    return RealtimeSettings().auth


# -- one line per frame -----------------------------------------------------------------------


def _short(value: object, width: int = 8) -> str:
    return str(value)[:width] if value is not None else "-"


def _clip(text: str, width: int = TEXT_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def summary(frame: dict[str, Any]) -> str:
    """What a frame says, in a few words."""
    kind = frame.get("type", "?")
    data = frame.get("data") if isinstance(frame.get("data"), dict) else {}
    assert isinstance(data, dict)
    if kind == "message.created":
        attached = len(data.get("attachments") or [])
        extra = f" [+{attached} attachment{'s' if attached > 1 else ''}]" if attached else ""
        seq = data.get("seq")
        return f"#{seq} {data.get('senderId')}: {_clip(str(data.get('text') or ''))}{extra}"
    if kind == "message.status":
        copies = data.get("copies") or []
        users = sorted({str(c.get("userId")) for c in copies if isinstance(c, dict)})
        who = ", ".join(users[:5]) + (f" +{len(users) - 5}" if len(users) > 5 else "")
        return (
            f"{data.get('status')}: {len(copies)} cop{'y' if len(copies) == 1 else 'ies'} ({who})"
        )
    if kind == "read":
        return f"read up to #{data.get('readUpToSeq')}"
    if isinstance(kind, str) and kind.startswith("member."):
        role = f" as {data['role']}" if data.get("role") else ""
        by = f" by {data['by']}" if data.get("by") and data.get("by") != data.get("userId") else ""
        return f"{data.get('userId')}{role}{by}"
    if isinstance(kind, str) and kind.startswith("conversation."):
        title = f' "{data["title"]}"' if data.get("title") else ""
        return f"{data.get('kind', '')}{title} by {data.get('createdBy', '?')}".strip()
    if kind == "resync":
        return "the cursor is too old: reload with REST (the stream goes on from here)"
    if kind == "error":
        return str(frame.get("error"))
    if kind in ("hello", "checkpoint", "live"):
        return f"cursor {_short(frame.get('cursor'), 24)}"
    rest = {k: v for k, v in frame.items() if k not in ("type", "cursor")}
    return _clip(json.dumps(rest, separators=(",", ":"), default=str))


def line(frame: dict[str, Any], now: datetime | None = None) -> tuple[str, str, str, str]:
    """(time, type, conversation, summary) of a frame as `tail` prints it."""
    at = (now or datetime.now()).strftime("%H:%M:%S.%f")[:-3]
    data = frame.get("data") if isinstance(frame.get("data"), dict) else {}
    assert isinstance(data, dict)
    conversation = _short(data.get("conversationId")) if data.get("conversationId") else "-"
    return at, str(frame.get("type", "?")), conversation, summary(frame)


STYLES = {
    "message.created": "bold",
    "message.status": "cyan",
    "read": "green",
    "resync": "bold red",
    "error": "red",
}


def printer(out: TextIO, *, color: bool | None = None) -> Callable[[dict[str, Any]], None]:
    """Prints a frame as one line: with `rich` when it is installed (and `out` is a terminal),
    else plain text."""
    if Console is None or not (color if color is not None else out.isatty()):

        def plain(frame: dict[str, Any]) -> None:
            at, kind, conversation, said = line(frame)
            print(f"{at}  {kind:<20} {conversation:<8}  {said}", file=out, flush=True)

        return plain
    console = Console(file=out, highlight=False, soft_wrap=True)

    def rich_line(frame: dict[str, Any]) -> None:
        at, kind, conversation, said = line(frame)
        style = STYLES.get(kind, "magenta" if kind.startswith("member.") else "")
        head = f"[dim]{at}[/dim]  [{style or 'default'}]{escape(kind):<20}[/] "
        console.print(f"{head}[yellow]{escape(conversation):<8}[/]  {escape(said)}")

    return rich_line


# -- the command ------------------------------------------------------------------------------


async def tail(
    url: str,
    *,
    token: str,
    api: str | None = None,
    device: str | None = None,
    ack: bool = False,
    control: bool = False,
    show: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Print `url`'s events for `token`'s user until cancelled."""
    show = show or printer(sys.stdout)
    tickets = ticket_source(api, token) if api else None
    client = StreamClient(
        url,
        token=None if tickets else token,
        tickets=tickets,
        device_id=device,
        auto_ack=ack,
    )
    async with client:
        print(f"connected to {url} ({'ticket' if tickets else 'bearer'})", file=sys.stderr)
        async for frame in client.events(control=control):
            show(frame)


def parser() -> argparse.ArgumentParser:
    found = argparse.ArgumentParser(
        prog="python -m relaybox.realtime tail",
        description="Print a user's live chat events, one line each, until Ctrl-C.",
    )
    found.add_argument("--url", default=DEFAULT_URL, help=f"the stream (default {DEFAULT_URL})")
    found.add_argument(
        "--api", default=None, help="the API's URL: connect with stream tickets from it"
    )
    found.add_argument("--sub", default="alice", help="the user (default alice)")
    found.add_argument(
        "--tenant", default=None, help="the tenant claim's value (default: the user)"
    )
    found.add_argument(
        "--token", default=None, help="a bearer token (default: a dev token signed here)"
    )
    found.add_argument("--device", default=None, help="a registered device id of the user")
    found.add_argument("--ack", action="store_true", help="acknowledge messages (DELIVERED)")
    found.add_argument(
        "--control", action="store_true", help="show hello/checkpoint/live frames too"
    )
    found.add_argument("--plain", action="store_true", help="no colours")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """`tail`'s entry point: exit 0 on Ctrl-C, 1 if the stream refuses the credentials."""
    args = parser().parse_args(argv)
    token = args.token or dev_token(args.sub, args.tenant)
    show = printer(sys.stdout, color=False if args.plain else None)
    work = tail(
        args.url,
        token=token,
        api=args.api,
        device=args.device,
        ack=args.ack,
        control=args.control,
        show=show,
    )
    try:
        asyncio.run(work)
    except KeyboardInterrupt:
        with contextlib.suppress(BrokenPipeError):
            print(file=sys.stderr)
        return 0
    except StreamRefused as exc:
        print(f"tail: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
