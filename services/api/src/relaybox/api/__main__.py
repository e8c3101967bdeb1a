"""`python -m relaybox.api [serve|token]`: run the API, or print a bearer token."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from relaybox.api.app import create_app
from relaybox.api.auth import ALL_SCOPES, InsecureSecretError, issue_token
from relaybox.api.settings import ApiSettings
from relaybox.common import runtime
from relaybox.common.observability.logging import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relaybox.api")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the API (default)")
    token = sub.add_parser("token", help="print a bearer token signed with the configured secret")
    token.add_argument("--sub", default="dev", help="client id (the token's subject)")
    token.add_argument(
        "--tenant", default=None, help="tenant, when RELAYBOX_AUTH__TENANT_CLAIM is not `sub`"
    )
    token.add_argument("--scopes", default=" ".join(ALL_SCOPES), help="space-separated scopes")
    token.add_argument("--ttl", type=int, default=None, help="lifetime in seconds")
    args = parser.parse_args(argv)
    settings = ApiSettings()
    if args.command == "token":
        scopes = tuple(args.scopes.split())
        print(issue_token(settings, args.sub, scopes, args.ttl, tenant=args.tenant))
        return 0
    configure_logging("api", settings.log)
    try:
        app = create_app(settings)
    except InsecureSecretError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runtime.freeze_startup_objects()
    uvicorn.run(
        app, host=settings.api.host, port=settings.api.port, log_level="warning", access_log=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
