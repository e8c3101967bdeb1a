"""`python -m relaybox.realtime [serve|tail]`: run a realtime replica, or print a user's live
events in the terminal."""

from __future__ import annotations

import sys

from relaybox.common import runtime
from relaybox.common.observability.logging import configure_logging


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "tail":
        from relaybox.realtime.tail import main as tail

        return int(tail(args[1:]))
    if args and args[0] not in ("serve",):
        print("usage: python -m relaybox.realtime [serve | tail --help]", file=sys.stderr)
        return 2
    from relaybox.realtime.server import serve_forever
    from relaybox.realtime.settings import RealtimeSettings

    settings = RealtimeSettings()
    configure_logging("realtime", settings.log)
    runtime.run(serve_forever(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
