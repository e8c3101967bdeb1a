"""`relaybox mailing ...` against the real API: uploads followed to completion through the real
pipeline (publisher, consumer, dispatcher) and the mock email API, Ctrl-C, and the controls."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.mock_meta.app import create_app as create_mock
from relaybox.mock_meta.settings import MockMetaSettings, SmtpSinkSettings
from relaybox.mock_meta.smtp.sink import SmtpSink
from tests.integration.cli.conftest import Cli, cli_env, finished, plain, start
from tests.integration.mailings.test_flow import (
    FIXTURE,
    addresses,
    mailing_stack,
    mock_config,
    mock_get,
    settings_for,
)
from tests.support.serving import serve_app

# rich draws its live bar only on an interactive terminal: these make the captured pipe one.
TERMINAL = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}
MAILING_LINE = re.compile(r"^mailing ([0-9a-f-]{36}) (\w+)", re.MULTILINE)


@pytest.fixture
async def email_api() -> AsyncIterator[str]:
    """The mock email API on a loopback port, its rate limit raised for speed."""
    async with serve_app(create_mock(MockMetaSettings(smtp_sink=SmtpSinkSettings(port=0)))) as url:
        api = f"{url}/email-api"
        await mock_config(api, rateLimitPerWindow=100, rateWindowS=1.0)
        yield api


def mailing_id_in(text: str) -> str:
    found = MAILING_LINE.search(text)
    assert found, text
    return found.group(1)


async def test_upload_follow_draws_the_bar_to_completion_then_the_invalid_rows(
    cli: Cli,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    email_api: str,
) -> None:
    con = settings_for(db_settings, broker_settings, sink, email_api, rate=80)
    async with mailing_stack(engine, topology, con, db_settings, broker_settings):
        ran = await cli(
            "mailing", "upload", str(FIXTURE), "--follow", "--interval", "0.2", env=TERMINAL
        )
        again = await cli("mailing", "upload", str(FIXTURE), "--json")
        listed = await cli("mailing", "list", "--json")
    assert ran.code == 0, ran
    screen = plain(ran.out)
    mailing_id = mailing_id_in(screen)
    assert "parsed 105 rows: 102 valid, 3 invalid, 0 duplicates" in screen
    # the bar's last frame: the whole bar, every valid recipient done
    assert re.search(r"✓ COMPLETED\s+━{30}\s+102/102\s+sent 102 · failed 0 · pending 0", screen), (
        screen
    )
    assert "Invalid rows (3)" in screen
    for value in ("invalid-email", "not-an-email", "@domain.com"):
        assert re.search(rf"│\s+\d+\s+│\s+{re.escape(value)}\s+│", screen), value
    assert re.search(r"mailing\s+" + mailing_id + r"\s+COMPLETED", screen)
    assert ran.err == ""
    # the same command again: the key derived from the file answers the same mailing
    assert again.code == 0, again
    assert again.json()["id"] == mailing_id
    assert again.json()["status"] == "COMPLETED"
    assert listed.json()["meta"]["total"] == 1
    accepted = (await mock_get(email_api, "messages"))["data"]
    assert len(accepted) == len({m["to"].lower() for m in accepted}) == 102


async def test_upload_follow_in_a_pipe_prints_a_line_per_change_and_json_at_the_end(
    cli: Cli,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    email_api: str,
    tmp_path: Path,
) -> None:
    listing = tmp_path / "customers.csv"
    listing.write_bytes(addresses(20, "cli.example") + b"not-an-address\nuser3@cli.example\n")
    con = settings_for(db_settings, broker_settings, sink, email_api, rate=40)
    async with mailing_stack(engine, topology, con, db_settings, broker_settings):
        ran = await cli(
            "mailing",
            "upload",
            str(listing),
            "--subject",
            "Your code",
            "--body",
            "Hello, your code is {token}.",
            "--follow",
            "--interval",
            "0.2",
            "--json",
        )
    assert ran.code == 0, ran
    final = ran.json()  # stdout holds the JSON alone
    assert final["status"] == "COMPLETED"
    assert final["subject"] == "Your code"
    counts = final["counts"]
    assert (counts["rows"], counts["valid"], counts["invalid"], counts["duplicates"]) == (
        22,
        20,
        1,
        1,
    )
    assert (counts["sent"], counts["failed"], counts["pending"]) == (20, 0, 0)
    assert [(r["rowNumber"], r["value"]) for r in final["invalidRows"]] == [(22, "not-an-address")]
    # the progress went to stderr, one line per change, the counts only moving forward
    lines = ran.err_lines
    assert lines[0] == f"mailing {final['id']} PARSING"
    assert "parsed 22 rows: 20 valid, 1 invalid, 1 duplicates" in lines
    assert lines[-1] == "COMPLETED 20/20 (100.0%) · sent 20 · failed 0 · pending 0"
    done = [int(m.group(1)) for line in lines if (m := re.match(r"\w+\s+(\d+)/20 ", line))]
    assert done == sorted(done)
    bodies = [m["body"] for m in (await mock_get(email_api, "messages"))["data"]]
    assert len(bodies) == 20
    assert all(b.startswith("Hello, your code is ") for b in bodies)


async def test_the_reads_of_a_finished_mailing(
    cli: Cli,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    email_api: str,
    tmp_path: Path,
) -> None:
    listing = tmp_path / "few.csv"
    listing.write_bytes(addresses(3, "reads.example") + b"nope\n")
    con = settings_for(db_settings, broker_settings, sink, email_api, rate=40)
    async with mailing_stack(engine, topology, con, db_settings, broker_settings):
        done = await cli("mailing", "upload", str(listing), "--follow", "--interval", "0.2")
    assert done.code == 0, done
    mailing_id = mailing_id_in(done.out)
    status, errors, entries, table, listed = await asyncio.gather(
        cli("mailing", "status", mailing_id),
        cli("mailing", "errors", mailing_id, "--json"),
        cli("mailing", "entries", mailing_id, "--status", "sent", "--limit=2", "--all", "--json"),
        cli("mailing", "entries", mailing_id),
        cli("mailing", "list"),
    )
    assert re.search(r"mailing\s+" + mailing_id + r"\s+COMPLETED", status.out), status
    assert "sent 3 · failed 0 · pending 0 · cancelled 0  (100.0% done)" in status.out
    assert [e["value"] for e in errors.json()["data"]] == ["nope"]
    sent = entries.json()  # two pages of two, followed
    assert [e["email"] for e in sent["data"]] == [f"user{n}@reads.example" for n in range(3)]
    assert sent["meta"]["nextCursor"] is None
    assert table.out.count("SENT") == 3
    assert mailing_id in listed.out
    assert "1 of 1" in listed.out


async def test_ctrl_c_stops_following_not_the_mailing(
    cli: Cli, api_url: str, token: str, tmp_path: Path
) -> None:
    """No publisher runs: the mailing stays PARSING, the follower polls until interrupted."""
    listing = tmp_path / "list.csv"
    listing.write_bytes(addresses(3, "wait.example"))
    process = await start(
        "mailing", "upload", str(listing), "--follow", "--interval", "0.2",
        env=cli_env(api_url, token),
    )  # fmt: skip
    assert process.stdout is not None
    created = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    mailing_id = mailing_id_in(created)
    progress = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    assert progress.startswith("PARSING   parsing: 0 addresses so far"), progress
    process.send_signal(signal.SIGINT)
    ran = await finished(process, 30)
    assert ran.code == 130, ran
    assert len(ran.err_lines) == 1
    assert ran.err.startswith(f"stopped following; mailing {mailing_id} goes on"), ran.err
    assert f"relaybox mailing status {mailing_id} --follow" in ran.err
    after = await cli("mailing", "status", mailing_id, "--json")
    assert after.json()["status"] == "PARSING"


async def test_pause_resume_cancel_and_a_refused_control(cli: Cli, tmp_path: Path) -> None:
    """Without a publisher the mailing stays in PARSING: each control's answer is certain."""
    listing = tmp_path / "list.csv"
    listing.write_bytes(addresses(2, "controls.example"))
    created = await cli("mailing", "upload", str(listing), "--json")
    assert created.code == 0, created
    mailing_id = created.json()["id"]
    assert created.json()["status"] == "PARSING"
    paused = await cli("mailing", "pause", mailing_id, "--json")
    assert paused.json()["status"] == "PAUSED"
    resumed = await cli("mailing", "resume", mailing_id)  # paused before its parse ended
    assert re.search(r"mailing\s+" + mailing_id + r"\s+PARSING", resumed.out), resumed
    cancelled = await cli("mailing", "cancel", mailing_id, "--json")
    assert cancelled.json()["status"] == "CANCELLED"
    again, retried, again_json = await asyncio.gather(
        cli("mailing", "cancel", mailing_id),
        cli("mailing", "retry-failed", mailing_id),
        cli("mailing", "cancel", mailing_id, "--json"),
    )
    assert (again.code, again.out) == (1, "")
    assert again.err_lines == [
        f"error: 409 Conflict: mailing {mailing_id} is CANCELLED; only a PARSING, RUNNING or "
        "PAUSED mailing can be cancelled"
    ]
    assert retried.code == 1
    assert len(retried.err_lines) == 1
    assert retried.err.startswith("error: 409 Conflict: ")
    assert again_json.code == 1
    problem = again_json.json()  # --json: the problem document on stdout
    assert (problem["status"], problem["mailingStatus"]) == (409, "CANCELLED")
    assert len(again_json.err_lines) == 1
    # the same file again within the re-upload window, but cancelled: a new key starts it over
    fresh = await cli("mailing", "upload", str(listing), "--idempotency-key", "again-1", "--json")
    assert fresh.json()["id"] != mailing_id
