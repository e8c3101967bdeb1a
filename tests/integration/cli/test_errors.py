"""How `relaybox` fails: bad usage exits 2 before any request; a problem detail from the API is
one line naming the field at fault and exit 1 (with `--json`, the document on stdout); an API
out of reach is one line and exit 1."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from tests.integration.cli.conftest import Cli
from tests.support.serving import free_port


async def test_bad_usage_exits_2_without_a_request(cli: Cli, tmp_path: Path) -> None:
    runs = await asyncio.gather(
        cli("mailing", "upload", str(tmp_path / "missing.csv")),
        cli("mailing", "list", "--status", "NOPE"),
        cli("mailing", "status", "not-a-uuid"),
        cli("mailing", "list", token=None),
        cli("email", "send", "--to", "a@example.com"),
        cli("email", "send", "--to", "a@example.com", "--subject", "Hi"),
        cli("mailing", "frobnicate"),
        cli("email", "log", "--limit", "0"),
    )
    for ran in runs:
        assert ran.code == 2, ran
        assert ran.out == ""
        assert "Usage: relaybox" in ran.err
    missing_token = runs[3].err
    assert "--token" in missing_token
    assert "RELAYBOX_TOKEN" in missing_token


async def test_a_problem_detail_is_one_line_naming_the_field(cli: Cli, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    no_token_in_body = tmp_path / "list.csv"
    no_token_in_body.write_bytes(b"email\na@example.com\n")
    unknown = uuid.uuid4()
    upload, upload_json, body, address, missing, bad_token = await asyncio.gather(
        cli("mailing", "upload", str(empty)),
        cli("mailing", "upload", str(empty), "--json"),
        cli("mailing", "upload", str(no_token_in_body), "--body", "no placeholder"),
        cli("email", "send", "--to", "not-an-address", "--subject", "Hi", "--text", "x"),
        cli("mailing", "pause", str(unknown)),
        cli("email", "log", token="not-a-jwt"),
    )
    assert (upload.code, upload.out) == (1, "")
    assert upload.err_lines == ["error: 400 Bad Request: the file is empty [field: file]"]
    assert upload_json.code == 1
    problem = upload_json.json()
    assert (problem["status"], problem["field"], problem["detail"]) == (
        400,
        "file",
        "the file is empty",
    )
    assert upload_json.err_lines == ["error: 400 Bad Request: the file is empty [field: file]"]
    assert body.code == 1
    assert body.err_lines == [
        "error: 400 Bad Request: body must contain the placeholder {token} (each recipient's "
        "token) [field: body]"
    ]
    assert address.code == 1
    assert len(address.err_lines) == 1
    assert address.err.startswith("error: 400 Bad Request: to: not a valid email address")
    assert missing.code == 1
    assert missing.err_lines == [f"error: 404 Not Found: no mailing with id {unknown}"]
    assert bad_token.code == 1
    assert len(bad_token.err_lines) == 1
    assert bad_token.err.startswith("error: 401 Unauthorized: ")
    assert "check --token / RELAYBOX_TOKEN" in bad_token.err


async def test_an_api_out_of_reach_is_one_line(cli: Cli) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    ran, as_json = await asyncio.gather(
        cli("mailing", "list", env={"RELAYBOX_API_URL": nowhere}),
        cli("email", "log", "--json", "--api-url", nowhere),
    )
    for run in (ran, as_json):
        assert (run.code, run.out) == (1, "")
        assert len(run.err_lines) == 1
        assert run.err.startswith(f"error: cannot reach the API at {nowhere} (")
        assert "check --api-url / RELAYBOX_API_URL" in run.err
