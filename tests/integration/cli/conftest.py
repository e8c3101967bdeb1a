"""The CLI's test kit: the real API served on a loopback port, and `relaybox` (the installed
console script) run as a subprocess against it, its exit status and both streams captured."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.settings import ApiSettings
from tests.support.serving import serve_app

RELAYBOX = Path(sys.executable).with_name("relaybox")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
WIDE = "200"  # columns: tables and the bar on one line each


@dataclass(frozen=True)
class Ran:
    """A finished `relaybox` run."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def plain(text: str) -> str:
    """Terminal output without its escape sequences (colours, cursor moves)."""
    return ANSI.sub("", text)


def cli_env(api_url: str, token: str | None, **extra: str) -> dict[str, str]:
    """The environment of a `relaybox` run: no RELAYBOX_* of the caller, the API and token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAYBOX_", "TTY_"))}
    env.update({"RELAYBOX_API_URL": api_url, "COLUMNS": WIDE, "NO_COLOR": "1"})
    env.pop("FORCE_COLOR", None)
    if token:
        env["RELAYBOX_TOKEN"] = token
    env.update(extra)
    return env


async def start(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    assert RELAYBOX.exists(), f"{RELAYBOX} is missing: `make install` installs the console script"
    return await asyncio.create_subprocess_exec(
        str(RELAYBOX),
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finished(process: asyncio.subprocess.Process, timeout: float) -> Ran:
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.send_signal(signal.SIGKILL)
        out, err = await process.communicate()
        raise AssertionError(f"relaybox did not exit within {timeout}s: {out!r} {err!r}") from None
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


Cli = Callable[..., Awaitable[Ran]]


@pytest.fixture
async def api_url(api_settings: ApiSettings, engine: AsyncEngine) -> AsyncIterator[str]:
    """The API on a loopback port, in the test's loop (the CLI runs in another process)."""
    async with serve_app(create_app(api_settings, engine=engine)) as url:
        yield url


@pytest.fixture
def cli(api_url: str, token: str) -> Cli:
    """`await cli("mailing", "list", "--json")`: a `relaybox` run against the API as the
    suite's client; `env=` adds variables, `token=None` runs without one."""

    async def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 60.0, **kw: Any
    ) -> Ran:
        process = await start(*args, env=cli_env(api_url, kw.get("token", token), **(env or {})))
        return await finished(process, timeout)

    return run
