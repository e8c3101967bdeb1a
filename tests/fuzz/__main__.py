"""`python -m tests.fuzz` (`make fuzz`): schemathesis against a live API, every check.

Creates a fresh database next to the test servers (`tests.support.servers`), migrates it, starts
the API (`python -m relaybox.api`) on a free port, runs `schemathesis run --checks all` against
its `/api/openapi.json` with a token holding every scope (webhooks signed by `tests.fuzz.hooks`),
then stops the API and drops the database. Exit status: schemathesis's (0 = no failure).

    python -m tests.fuzz                      # the full run (make fuzz)
    python -m tests.fuzz --max-examples 5     # a smoke (the pytest one in test_fuzz_smoke.py)
    python -m tests.fuzz -- --include-path-regex '^/send'   # anything after -- goes to schemathesis
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from relaybox.api.auth import issue_token
from relaybox.api.settings import ApiSettings, AuthSettings
from relaybox.common.db.migrate import upgrade
from tests.fuzz.hooks import SECRET_ENV
from tests.support.databases import drop_database
from tests.support.servers import locate
from tests.support.serving import free_port

JWT_SECRET = "fuzz-secret-that-is-long-enough-for-hs256-signing"
WEBHOOK_SECRET = "fuzz-webhook-signing-secret"
DEFAULT_EXAMPLES = 100


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A migrated database of its own, dropped at the end."""
    with locate() as servers:
        name = f"relaybox_fuzz_{uuid.uuid4().hex[:8]}"
        url = make_url(servers.database_admin_url).set(database=name)
        rendered = url.render_as_string(hide_password=False)
        upgrade(rendered)
        try:
            yield rendered
        finally:
            drop_database(rendered)


def api_env(database_url: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
    env.update(
        {
            "RELAYBOX_DATABASE__URL": database_url,
            "RELAYBOX_DATABASE__POOL_SIZE": "4",
            "RELAYBOX_DATABASE__MAX_OVERFLOW": "2",
            "RELAYBOX_API__HOST": "127.0.0.1",
            "RELAYBOX_API__PORT": str(port),
            "RELAYBOX_AUTH__JWT_SECRET": JWT_SECRET,
            "RELAYBOX_META__WEBHOOK_SECRET": WEBHOOK_SECRET,
            "RELAYBOX_PUSH__WEBHOOK_SECRET": WEBHOOK_SECRET,
            "RELAYBOX_LOG__LEVEL": "WARNING",
            # The fuzzer sends thousands of requests: keep the per-client limit out of its way
            # (its 429 is declared; tests/integration/platform/test_ratelimit.py covers it).
            "RELAYBOX_RATE_LIMIT__SEND_PER_MINUTE": "1000000",
        }
    )
    return env


@contextlib.contextmanager
def running_api(database_url: str) -> Iterator[str]:
    """The API as a process on a free port; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    files = tempfile.mkdtemp(prefix="relaybox-fuzz-attachments-")  # uploaded attachments
    process = subprocess.Popen(
        [sys.executable, "-m", "relaybox.api", "serve"],
        env={**api_env(database_url, port), "RELAYBOX_CHAT__STORAGE__ROOT": files},
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the API exited with {process.returncode} at start")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not answer /health within 30 s")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(files, ignore_errors=True)


def schemathesis_command(base: str, token: str, args: argparse.Namespace) -> list[str]:
    executable = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    command = [
        executable,
        "run",
        f"{base}/api/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(args.max_examples),
        "--workers",
        str(args.workers),
        "--suppress-health-check",
        "too_slow,filter_too_much",
    ]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    if args.phases:
        command += ["--phases", args.phases]
    return [*command, *args.extra]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--max-examples", type=int, default=DEFAULT_EXAMPLES)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="schemathesis threads (1: CPython 3.11's ast.parse is not thread-safe, and "
        "hypothesis parses lambda sources while it builds strategies: with 2, a run now and "
        "then stopped on 'SystemError: AST constructor recursion depth mismatch')",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--phases", default=None, help="schemathesis phases (default: all)")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    args = parser.parse_args(argv)
    args.extra = extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = ApiSettings(auth=AuthSettings(jwt_secret=JWT_SECRET))
    token = issue_token(settings, "fuzz")  # every scope
    with fresh_database() as database_url, running_api(database_url) as base:
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks",
            SECRET_ENV: WEBHOOK_SECRET,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])
            ),
        }
        return subprocess.call(schemathesis_command(base, token, args), env=env)


if __name__ == "__main__":
    sys.exit(main())
