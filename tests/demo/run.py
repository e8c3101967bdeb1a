"""One demo run: the stack up, the four scenes in turn (a scene that raises fails its section and
the next one still runs), the stack down, the logs searched for secrets, the report."""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import httpx
from sqlalchemy.engine import make_url

from relaybox.common.settings import BrokerSettings
from tests.chaos.leaks import find_leaks
from tests.demo import gateway, mailing, messenger, retry
from tests.demo.http import RETRIED
from tests.demo.report import Section, passed, render, seconds
from tests.demo.stack import TENANT, Stack
from tests.support.broker import delete_topology


@dataclass(frozen=True)
class Options:
    database_url: str  # the demo's own database (already migrated)
    broker_url: str
    topology_prefix: str
    fixture: Path
    rate: float
    log_dir: Path
    storage_dir: Path


@dataclass(frozen=True)
class Report:
    terminal: str  # the long tables left out
    file: str  # everything
    ok: bool  # every check held


async def run(options: Options) -> Report:
    """The report (Markdown) and whether every check held. SIGTERM cancels it like Ctrl-C
    does: the processes are stopped and the topology deleted on the way out."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    broker = BrokerSettings(url=options.broker_url, topology_prefix=options.topology_prefix)
    stack = Stack(options.database_url, broker, options.log_dir, options.storage_dir, options.rate)
    begun, started = datetime.now(UTC), time.monotonic()
    base = Section("The stack")
    sections = [base]
    tokens: list[str] = []
    try:
        progress("starting mock-meta, api, publisher, consumer, realtime")
        try:
            up_s = await stack.start()
        except (TimeoutError, OSError) as exc:
            base.check("every service answered /health", False, f"{type(exc).__name__}: {exc}")
        else:
            describe(base, stack, options, up_s)
            tokens = await scenes(stack, options, sections)
    finally:
        await stack.stop()
        await delete_topology(stack.broker)  # with the retry tiers the services declared
    base.check("no service exited during the demo", not stack.exited(), stack.exited() or "")
    if RETRIED:
        base.say(
            '- The API answered "not now" (with Retry-After) and the call was repeated: '
            + ", ".join(f"{n} x {status}" for status, n in sorted(RETRIED.items()))
            + " (503: its database out of reach, e.g. the server's connections all taken)."
        )
    leaks = find_leaks(stack.cluster.log_files(), named_secrets(stack), tokens)
    base.check(
        "no secret in any service's log",
        leaks.leaking_lines == 0,
        f"{leaks.lines:,} lines in {leaks.files} log files searched for {leaks.secrets} secrets "
        f"and any JWT: {leaks.leaking_lines} found {leaks.examples or ''}",
    )
    took = time.monotonic() - started
    header = [
        f"`make demo` (`python -m tests.demo`), {begun:%Y-%m-%d %H:%M} UTC on "
        f"{platform.node() or 'this machine'} ({os.cpu_count()} CPUs): {seconds(took)} in all, "
        "the stack's start and stop included.",
    ]
    return Report(render(header, sections, full=False), render(header, sections), passed(sections))


def describe(section: Section, stack: Stack, options: Options, up_s: float) -> None:
    database = make_url(options.database_url).database
    section.say(
        f"- A database of its own, `{database}` (dropped, created and migrated at the start, "
        f"dropped at the end), the topology prefix `{options.topology_prefix}` (deleted at the "
        f"end), tenant claim `org` (organisation `{TENANT}`), secrets generated for the run."
    )
    section.table(
        ["service", "module", "port"],
        [
            [name, f"`{module}`", port]
            for name, (module, _env, port) in stack.environments().items()
        ],
    )
    section.say(f"- All five answered `/health` {seconds(up_s)} after they were started.")
    section.check("every service answered /health", True, seconds(up_s))


async def scenes(stack: Stack, options: Options, sections: list[Section]) -> list[str]:
    """Run the scenes in turn; the per-recipient tokens the mailing sent."""
    tokens: list[str] = []
    headers = {"Authorization": f"Bearer {stack.token('demo')}"}
    async with (
        httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=30) as api,
        httpx.AsyncClient(base_url=stack.mock_url, timeout=30) as mock,
    ):

        async def the_mailing(section: Section) -> None:
            tokens.extend(await mailing.run(section, api, mock, options.fixture, options.rate))

        plan: list[tuple[str, Callable[[Section], Awaitable[None]]]] = [
            (mailing.TITLE, the_mailing),
            (gateway.TITLE, lambda s: gateway.run(s, api, mock, stack.keys.webhook_secret)),
            (retry.TITLE, lambda s: retry.run(s, api, mock)),
            (messenger.TITLE, lambda s: messenger.run(s, stack)),
        ]
        for title, scene in plan:
            section = Section(title)
            sections.append(section)
            progress(title)
            started = time.monotonic()
            try:
                await scene(section)
            except Exception as exc:  # noqa: BLE001 - any failure is the scene's, reported
                section.check("the scene ran to its end", False, f"{type(exc).__name__}: {exc}")
            verdict = "ok" if section.ok else "FAILED"
            progress(f"  {verdict} in {seconds(time.monotonic() - started)}")
    return tokens


def named_secrets(stack: Stack) -> dict[str, str]:
    keys = stack.keys
    named = {
        "JWT secret": keys.jwt_secret,
        "bearer token": stack.token("demo"),
        "webhook secret": keys.webhook_secret,
        "email API password": keys.email_api_password,
        "push server key": stack.push_key,
    }
    password = urlparse(stack.broker.url).password
    if password:
        named["broker password"] = f":{password}@"
    return named


def progress(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)
