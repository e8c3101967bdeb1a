"""`relaybox email ...` and `relaybox token` against the real API (no pipeline runs: a queued
email stays PENDING, so every count is certain)."""

from __future__ import annotations

import asyncio
import re
import sys

from tests.integration.cli.conftest import Cli, Ran, cli_env, finished
from tests.integration.conftest import SECRET


async def test_send_then_read_the_log_with_todays_totals(cli: Cli) -> None:
    sent = await cli(
        "email", "send", "--to", "alice@example.com", "--subject", "Welcome",
        "--text", "Hello Alice", "--json",
    )  # fmt: skip
    assert sent.code == 0, sent
    accepted = sent.json()
    assert accepted["status"] == "PENDING"
    keyed = [
        "email", "send", "--to", "bob@example.com", "--subject", "Once",
        "--html", "<p>once</p>", "--idempotency-key", "bob-once", "--json",
    ]  # fmt: skip
    first = await cli(*keyed)
    second = await cli(*keyed)
    assert first.json()["id"] == second.json()["id"]
    today, table, sent_only, shown, human_send = await asyncio.gather(
        cli("email", "log", "--today", "--json"),
        cli("email", "log", "--today"),
        cli("email", "log", "--status", "sent", "--json"),
        cli("email", "show", accepted["id"], "--json"),
        cli("email", "send", "--to", "carol@example.com", "--subject", "Hi", "--text", "x"),
    )
    log = today.json()
    assert {e["to"] for e in log["data"]} >= {"alice@example.com", "bob@example.com"}
    totals = log["stats"]["today"]
    assert (totals["sent"], totals["failed"]) == (0, 0)
    assert totals["total"] == totals["pending"] >= 2
    assert table.code == 0, table
    assert "alice@example.com" in table.out
    assert re.search(r"today \(\d{4}-\d\d-\d\d, UTC\): \d+ total · 0 sent · 0 failed", table.out)
    assert sent_only.json()["data"] == []
    assert shown.json()["text"] == "Hello Alice"
    assert re.match(r"email [0-9a-f-]{36} PENDING \(to carol@example.com\)", human_send.out)


async def test_token_signs_locally_what_the_api_accepts(cli: Cli, api_url: str) -> None:
    signing = {"RELAYBOX_AUTH__JWT_SECRET": SECRET}
    narrow = await cli(
        "token", "--sub", "test-client", "--scopes", "mailing:read", env=signing, token=None
    )
    described = await cli("token", "--sub", "test-client", "--json", env=signing, token=None)
    other_secret = await cli("token", "--sub", "test-client", token=None)
    assert narrow.code == 0, narrow
    reader = narrow.out.strip()
    listed, refused, wrong = await asyncio.gather(
        cli("mailing", "list", "--json", token=reader),
        cli("email", "log", token=reader),
        cli("mailing", "list", token=other_secret.out.strip()),
    )
    assert listed.code == 0, listed
    assert listed.json()["meta"]["total"] == 0
    assert refused.code == 1
    assert refused.err_lines == ["error: 403 Forbidden: this token lacks the 'email:read' scope"]
    assert wrong.code == 1
    assert wrong.err.startswith("error: 401 Unauthorized")
    token = described.json()
    assert token["sub"] == "test-client"
    assert "admin" in token["scopes"]
    assert (await cli("mailing", "list", token=token["token"])).code == 0
    # the old form keeps working
    old = await start_module("relaybox.api", "token", "--sub", "x", env=cli_env(api_url, None))
    assert old.code == 0
    assert old.out.count(".") == 2  # a JWT


async def start_module(module: str, *args: str, env: dict[str, str]) -> Ran:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return await finished(process, 60)
