"""The service processes of a chaos run: started, killed with SIGKILL, restarted like a
supervisor would, each start's output captured in its own log file."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import cpu_seconds, die_with_parent
from tests.support.serving import wait_http

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 20.0


@dataclass
class Service:
    """One replica: how to start it, and its current process."""

    name: str
    module: str
    env: dict[str, str]
    health_url: str | None
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    killed: bool = False  # the harness killed the current process on purpose
    unexpected_exits: list[int] = field(default_factory=list)
    cpu_s: float = 0.0  # CPU seconds of the processes that ended

    def account(self) -> None:
        """Add the current process's CPU time (read before it is reaped)."""
        if self.process is not None and self.process.returncode is None:
            self.cpu_s += cpu_seconds(self.process.pid) or 0.0


class Cluster:
    """The run's processes; logs go to `<log_dir>/<name>.<start>.log`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.services: dict[str, Service] = {}

    async def add(
        self, name: str, module: str, env: dict[str, str], health_url: str | None = None
    ) -> Service:
        """Register a replica and start it (waits until it answers its health URL)."""
        service = Service(name, module, env, health_url)
        self.services[name] = service
        await self.start(service)
        return service

    async def start(self, service: Service) -> None:
        service.starts += 1
        service.killed = False
        log_path = self.log_dir / f"{service.name}.{service.starts}.log"
        with log_path.open("wb") as log:  # the child keeps its own descriptor
            service.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                service.module,
                env=service.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=functools.partial(die_with_parent, signal.SIGKILL),
            )
        if service.health_url is not None:
            await wait_http(service.health_url, READY_TIMEOUT_S)

    async def kill(self, name: str) -> float:
        """SIGKILL the replica (no clean-up at all); returns the moment (epoch seconds)."""
        service = self.services[name]
        assert service.process is not None
        service.killed = True
        service.account()
        service.process.kill()
        moment = time.time()
        await service.process.wait()
        return moment

    async def restart(self, name: str) -> None:
        await self.start(self.services[name])

    async def supervise(self) -> list[str]:
        """Restart every replica that exited on its own; names of those found dead."""
        dead = []
        for service in self.services.values():
            process = service.process
            if process is None or process.returncode is None or service.killed:
                continue
            service.unexpected_exits.append(process.returncode)
            dead.append(service.name)
            await self.start(service)
        return dead

    async def stop(self, names: list[str] | None = None) -> None:
        """SIGTERM (drain), then SIGKILL whatever is still running after the grace."""
        chosen = [self.services[n] for n in names] if names else list(self.services.values())
        running = [s for s in chosen if s.process and s.process.returncode is None]
        for service in running:
            assert service.process is not None
            service.killed = True
            service.account()  # the drain after SIGTERM is not counted
            with contextlib.suppress(ProcessLookupError):
                service.process.terminate()
        for service in running:
            assert service.process is not None
            try:
                await asyncio.wait_for(service.process.wait(), STOP_GRACE_S)
            except TimeoutError:
                service.process.kill()
                await service.process.wait()

    def log_files(self) -> list[Path]:
        return sorted(self.log_dir.glob("*.log"))

    def cpu(self) -> dict[str, float]:
        """CPU seconds each replica used over all its processes (those that ended)."""
        return {name: round(s.cpu_s, 1) for name, s in self.services.items()}
