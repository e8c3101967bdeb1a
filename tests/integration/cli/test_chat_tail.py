"""`relaybox chat tail` against a realtime replica and the API (served on a loopback port for
its stream tickets), with the publisher carrying the events: what alice posts reaches bob's
terminal; Ctrl-C ends it with exit 0."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.auth import USER_SCOPES, issue_token
from relaybox.api.settings import ApiSettings
from tests.integration.chat.conftest import TENANT, People
from tests.integration.chat.conftest import chat_settings as chat_settings
from tests.integration.chat.conftest import people as people
from tests.integration.chat.realtime.conftest import Replicas
from tests.integration.chat.realtime.conftest import publisher as publisher
from tests.integration.chat.realtime.conftest import replicas as replicas
from tests.integration.chat.support import conversation, post
from tests.integration.cli.conftest import cli_env, finished, start
from tests.support.serving import serve_app

pytestmark = pytest.mark.usefixtures("publisher")


async def next_frame(stream: asyncio.StreamReader, kind: str) -> dict[str, Any]:
    """The next JSON frame of type `kind` that the tail prints (others skipped)."""
    while True:
        line = await asyncio.wait_for(stream.readline(), 20)
        assert line, "the tail ended"
        frame: dict[str, Any] = json.loads(line)
        if frame["type"] == kind:
            return frame


@pytest.mark.parametrize("credentials", ["ticket", "bearer"])
async def test_tail_prints_what_reaches_the_user_until_ctrl_c(
    replicas: Replicas,
    people: People,
    chat_settings: ApiSettings,
    engine: AsyncEngine,
    credentials: str,
) -> None:
    replica = await replicas()
    bob = issue_token(chat_settings, "bob", USER_SCOPES, tenant=TENANT)
    async with serve_app(create_app(chat_settings, engine=engine)) as api_url:
        args = ["chat", "tail", "--json", "--control"]
        args += ["--stream-url", f"ws://127.0.0.1:{replica.port}/chat/stream"]
        if credentials == "bearer":
            args.append("--bearer")
        process = await start(*args, env=cli_env(api_url, bob))
        assert process.stdout is not None
        await next_frame(process.stdout, "live")  # bob's events are bound: nothing is missed
        chat = await conversation(people("alice"), "direct", ("bob",))
        sent = await post(people("alice"), chat, "hello from the terminal test")
        created = await next_frame(process.stdout, "message.created")
        process.send_signal(signal.SIGINT)
        ran = await finished(process, 30)
    assert created["data"]["id"] == sent["id"]
    assert created["data"]["text"] == "hello from the terminal test"
    assert ran.code == 0, ran
    assert "connected to ws://127.0.0.1:" in ran.err
    assert f"({credentials})" in ran.err
    assert ran.err_lines[-1] == "stopped"


async def test_a_refused_token_is_one_line(
    replicas: Replicas, chat_settings: ApiSettings, engine: AsyncEngine
) -> None:
    replica = await replicas()
    async with serve_app(create_app(chat_settings, engine=engine)) as api_url:
        stream = f"ws://127.0.0.1:{replica.port}/chat/stream"
        env = cli_env(api_url, "not-a-jwt")
        runs = [
            await finished(await start("chat", "tail", "--stream-url", stream, *extra, env=env), 30)
            for extra in ([], ["--bearer"])
        ]
    for ran in runs:
        assert (ran.code, ran.out) == (1, "")
        assert len(ran.err_lines) == 1, ran.err
        assert ran.err.startswith("error: the stream refused the connection: 401 "), ran.err
