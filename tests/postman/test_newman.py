"""The committed Postman collection, run by newman against the real API (a process on a free
port, on this run's migrated database): every request's test (its success status) passes, in
the collection's order, each creating request feeding the ids the later ones read.

Only the API runs (no publisher, consumer or mock-meta): the API writes rows and outbox rows and
answers from PostgreSQL alone, so every answer is decided when the request is made, never by
how far a worker got. `SKIPPED` names the requests this smoke leaves out and why: each needs a
state only the workers make. Skips when newman is not installed (`.ci/run` installs it).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaybox.common.auth import ALL_SCOPES, AuthSettings, sign_bearer
from tests.postman.collection import COLLECTION_PATH, POSTMAN_DIR, build_collection
from tests.support.databases import truncate
from tests.support.serving import free_port, wait_http

NEWMAN = shutil.which("newman")
pytestmark = pytest.mark.skipif(
    NEWMAN is None, reason="newman is not installed (npm install -g newman; .ci/run does)"
)

JWT_SECRET = "postman-smoke-secret-long-enough-for-hs256"
META_SECRET = "postman-smoke-meta-webhook-secret"
PUSH_SECRET = "postman-smoke-push-webhook-secret"
VERIFY_TOKEN = "postman-smoke-verify-token"

SKIPPED: dict[str, str] = {
    "POST /messages/{message_id}/retry": "sends a FAILED message again: a message is FAILED only "
    "after the consumer gave up on it (the run's message is PENDING: 409)",
    "POST /chat/conversations/{conversation_id}/leave": "the caller created the group and is "
    "its only owner, who may not leave it (409)",
    # A dead letter exists only after the consumer gave a message up (its last retry tier) and
    # drained it from the DLQ.
    "GET /admin/dead-letters/{letter_id}": "reads a dead letter (none: 404)",
    "POST /admin/dead-letters/replay": "replays dead letters (none: 409)",
    "POST /admin/dead-letters/discard": "discards dead letters (none: 409)",
}


def _api_env(database_url: str, port: int, attachments: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
    env.update(
        {
            "RELAYBOX_DATABASE__URL": database_url,
            "RELAYBOX_DATABASE__POOL_SIZE": "4",
            "RELAYBOX_API__HOST": "127.0.0.1",
            "RELAYBOX_API__PORT": str(port),
            "RELAYBOX_AUTH__JWT_SECRET": JWT_SECRET,
            "RELAYBOX_META__WEBHOOK_SECRET": META_SECRET,
            "RELAYBOX_META__VERIFY_TOKEN": VERIFY_TOKEN,
            "RELAYBOX_PUSH__WEBHOOK_SECRET": PUSH_SECRET,
            "RELAYBOX_CHAT__STORAGE__ROOT": str(attachments),
            "RELAYBOX_LOG__LEVEL": "WARNING",
        }
    )
    return env


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[str]:
    """`python -m relaybox.api serve` on a free port, on the run's database emptied first."""
    asyncio.run(truncate(database_url))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "relaybox.api", "serve"],
        env=_api_env(database_url, port, tmp_path / "attachments"),
        stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_http(f"{base}/health"))
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _names(collection: dict[str, Any]) -> list[str]:
    return [item["name"] for folder in collection["item"] for item in folder["item"]]


def _without(collection: dict[str, Any], names: set[str]) -> dict[str, Any]:
    folders = [
        {**folder, "item": [i for i in folder["item"] if i["name"] not in names]}
        for folder in collection["item"]
    ]
    return {**collection, "item": folders}


@pytest.mark.timeout(90)
def test_newman_runs_the_collection_against_the_api(api: str, tmp_path: Path) -> None:
    committed = json.loads(COLLECTION_PATH.read_text())
    # The document the live API serves builds the committed collection.
    live = httpx.get(f"{api}/api/openapi.json", timeout=10).raise_for_status().json()
    assert build_collection(live) == committed, "stale: run `make postman`"
    missing = set(SKIPPED) - set(_names(committed))
    assert not missing, f"SKIPPED names requests the collection does not have: {missing}"

    smoke = tmp_path / "smoke.postman_collection.json"
    smoke.write_text(json.dumps(_without(committed, set(SKIPPED))))
    report = tmp_path / "report.json"
    token = sign_bearer(AuthSettings(jwt_secret=JWT_SECRET), "dev", ALL_SCOPES, ttl_s=600)
    assert NEWMAN is not None
    run = subprocess.run(
        [
            NEWMAN,
            "run",
            str(smoke),
            "--working-dir",
            str(POSTMAN_DIR),  # the files the multipart requests upload
            "--env-var",
            f"baseUrl={api}",
            "--env-var",
            f"token={token}",
            "--env-var",
            f"metaWebhookSecret={META_SECRET}",
            "--env-var",
            f"pushWebhookSecret={PUSH_SECRET}",
            "--env-var",
            f"metaVerifyToken={VERIFY_TOKEN}",
            "--timeout-request",
            "10000",
            "--reporters",
            "cli,json",
            "--reporter-json-export",
            str(report),
            "--color",
            "off",
            "--disable-unicode",
        ],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert run.returncode == 0, (
        f"newman exited {run.returncode}:\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    )
    stats = json.loads(report.read_text())["run"]["stats"]
    expected = len(_names(committed)) - len(SKIPPED)
    assert stats["requests"] == {"total": expected, "pending": 0, "failed": 0}, stats
    assert stats["assertions"]["failed"] == 0, stats
    assert stats["assertions"]["total"] == expected, stats
