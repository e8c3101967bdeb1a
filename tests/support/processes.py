"""Run relaybox services as real subprocesses (for kill/crash tests)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from relaybox.common.faults import CRASH_EXIT_CODE
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from tests.support.serving import free_ports, wait_http

__all__ = [
    "CRASH_EXIT_CODE",
    "cpu_seconds",
    "die_with_parent",
    "mock_meta_process",
    "service_env",
    "start_service",
    "wait_exit",
]


def service_env(db: DatabaseSettings, broker: BrokerSettings, **overrides: Any) -> dict[str, str]:
    """The environment of a service process pointed at the test database and topology."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
    env.update(
        {
            "RELAYBOX_DATABASE__URL": db.url,
            "RELAYBOX_BROKER__URL": broker.url,
            "RELAYBOX_BROKER__TOPOLOGY_PREFIX": broker.topology_prefix,
            "RELAYBOX_BROKER__RETRY_DELAYS_MS": json.dumps(broker.retry_delays_ms),
            "RELAYBOX_BROKER__DELIVERY_LIMIT": str(broker.delivery_limit),
            "RELAYBOX_PUBLISHER__PORT": "0",
            "RELAYBOX_CONSUMER__PORT": "0",
            "RELAYBOX_LOG__LEVEL": "WARNING",
        }
    )
    env.update({f"RELAYBOX_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


async def start_service(module: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, env=env, stdin=asyncio.subprocess.DEVNULL
    )


async def wait_exit(process: asyncio.subprocess.Process, timeout: float = 30.0) -> int:
    """Wait for the process to end on its own (a fail point); kill it if it overstays."""
    try:
        return await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"process did not exit within {timeout}s") from None


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child before exec: receive `sig` when the parent dies (Linux), never outlive it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig)  # PR_SET_PDEATHSIG


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@contextlib.contextmanager
def mock_meta_process(
    db: DatabaseSettings, broker: BrokerSettings, **overrides: Any
) -> Iterator[str]:
    """`python -m relaybox.mock_meta` on free ports (HTTP and its SMTP sink) with `overrides`
    as settings (`meta__webhook_secret=...`); yields its URL, terminates it at the end."""
    port, smtp_port = free_ports(2)
    env = service_env(db, broker, mock_meta__port=port, smtp_sink__port=smtp_port, **overrides)
    process = subprocess.Popen(
        [sys.executable, "-m", "relaybox.mock_meta"], env=env, stdin=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_http(f"{url}/health"))
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)
