"""What the realtime benchmarks share: the services from their real entrypoints (the API, the
publisher, optionally the consumer, and realtime replicas), groups seeded directly, stream
clients opened in bulk, a process's resident memory, the open-files limit, and the ledger of
the events each user may see (`chat_events`)."""

from __future__ import annotations

import asyncio
import os
import resource
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench.chat_common import TENANT, TENANT_CLAIM, api_env
from bench.common import (
    AMQP_URL,
    JWT_SECRET,
    BenchError,
    Service,
    broker_settings,
    free_ports,
)
from relaybox.realtime.client import StreamClient

STREAM_PATH = "/chat/stream"


# -- the services ---------------------------------------------------------------------------


def broker_env(database_url: str, tag: str) -> dict[str, str]:
    return {
        "RELAYBOX_DATABASE__URL": database_url,
        "RELAYBOX_BROKER__URL": AMQP_URL,
        "RELAYBOX_BROKER__TOPOLOGY_PREFIX": broker_settings(tag).topology_prefix,
        "RELAYBOX_DEV_MODE": "false",
    }


def realtime_env(database_url: str, tag: str, port: int, replica: str) -> dict[str, str]:
    """A replica's settings: the benchmark's JWT secret and tenant claim (the API's)."""
    return {
        **broker_env(database_url, tag),
        "RELAYBOX_AUTH__JWT_SECRET": JWT_SECRET,
        "RELAYBOX_AUTH__TENANT_CLAIM": TENANT_CLAIM,
        "RELAYBOX_REALTIME__HOST": "127.0.0.1",
        "RELAYBOX_REALTIME__PORT": str(port),
        "RELAYBOX_REALTIME__REPLICA": replica,
        "RELAYBOX_LOG__LEVEL": "WARNING",
    }


def realtime_service(
    database_url: str, tag: str, port: int, replica: str, extra: dict[str, str] | None = None
) -> Service:
    """`python -m relaybox.realtime` on `port` (not started)."""
    env = {**realtime_env(database_url, tag, port, replica), **(extra or {})}
    argv = ["-m", "relaybox.realtime"]
    if profile_dir := os.environ.get("RELAYBOX_BENCH_PROFILE"):  # cProfile, written at exit
        argv = ["-m", "cProfile", "-o", f"{profile_dir}/{replica}.prof", *argv]
    return Service(replica, argv, env, ready_url=f"http://127.0.0.1:{port}/ready")


def _worker(name: str, module: str, env: dict[str, str], port: int) -> Service:
    prefix = f"RELAYBOX_{name.upper()}__"
    env = {**env, f"{prefix}HOST": "127.0.0.1", f"{prefix}PORT": str(port)}
    return Service(name, ["-m", module], env, ready_url=f"http://127.0.0.1:{port}/ready")


@dataclass
class Stack:
    """The services of one run. `realtime[i]` listens on `stream_url(i)`."""

    database_url: str
    tag: str
    services: list[Service] = field(default_factory=list)
    realtime: list[Service] = field(default_factory=list)
    realtime_ports: list[int] = field(default_factory=list)
    realtime_extra: dict[str, str] = field(default_factory=dict)
    api_url: str = ""

    def stream_url(self, index: int = 0) -> str:
        return f"ws://127.0.0.1:{self.realtime_ports[index]}{STREAM_PATH}"

    @property
    def all(self) -> list[Service]:
        return [*self.services, *self.realtime]

    def start(self) -> None:
        for service in self.all:
            service.start()

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        for service in self.all:
            await service.wait_ready(timeout_s)

    def check_alive(self) -> None:
        for service in self.all:
            if service.process is not None and service.process.poll() is not None:
                raise BenchError(f"{service.name} died:\n{service.output()}")

    def stop(self) -> None:
        grace_s = 60.0 if os.environ.get("RELAYBOX_BENCH_PROFILE") else 10.0
        for service in reversed(self.all):
            service.stop(grace_s)

    def restart_realtime(self, index: int) -> Service:
        """A new process for replica `index` on the same port (the old one must have exited)."""
        old = self.realtime[index]
        new = realtime_service(
            self.database_url,
            self.tag,
            self.realtime_ports[index],
            f"{old.name}-again",
            self.realtime_extra,
        )
        self.realtime[index] = new
        new.start()
        return new


def stack(
    database_url: str,
    tag: str,
    *,
    replicas: int = 1,
    api: bool = True,
    consumer: bool = False,
    realtime_extra: dict[str, str] | None = None,
    api_pool: int = 10,
) -> Stack:
    """The API and publisher (with `api`), the consumer (with `consumer`) and `replicas`
    realtime replicas, wired to one database and topology (not started)."""
    ports = free_ports(3 + replicas)
    api_port, publisher_port, consumer_port, stream_ports = ports[0], ports[1], ports[2], ports[3:]
    broker = broker_env(database_url, tag)
    found = Stack(database_url, tag, realtime_ports=stream_ports)
    found.realtime_extra = dict(realtime_extra or {})
    if api:
        found.api_url = f"http://127.0.0.1:{api_port}"
        found.services.append(
            Service(
                "api",
                ["-m", "relaybox.api", "serve"],
                {
                    **api_env(database_url),
                    **broker,
                    "RELAYBOX_DATABASE__POOL_SIZE": str(api_pool),
                    "RELAYBOX_API__HOST": "127.0.0.1",
                    "RELAYBOX_API__PORT": str(api_port),
                },
                ready_url=f"{found.api_url}/ready",
            )
        )
        found.services.append(_worker("publisher", "relaybox.publisher", broker, publisher_port))
    if consumer:
        found.services.append(_worker("consumer", "relaybox.consumer", broker, consumer_port))
    found.realtime = [
        realtime_service(database_url, tag, port, f"bench-rt-{i}", found.realtime_extra)
        for i, port in enumerate(stream_ports)
    ]
    return found


# -- seeding --------------------------------------------------------------------------------


async def seed_groups(dsn: str, groups: Sequence[Sequence[str]]) -> list[uuid.UUID]:
    """One group conversation per list of users (the first one its owner), written directly:
    no events (the stream shows only what happens after)."""
    ids = [uuid.uuid4() for _ in groups]
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.executemany(
            "INSERT INTO chat_conversations (id, tenant_id, kind, title, created_by)"
            " VALUES ($1, $2, 'group', $3, $4)",
            [
                (c, TENANT, f"bench {i}", users[0])
                for i, (c, users) in enumerate(zip(ids, groups, strict=True))
            ],
        )
        await conn.copy_records_to_table(
            "chat_members",
            records=[
                (c, TENANT, user, "owner" if j == 0 else "member", 0, 0)
                for c, users in zip(ids, groups, strict=True)
                for j, user in enumerate(users)
            ],
            columns=["conversation_id", "tenant_id", "user_id", "role", "joined_seq", "read_seq"],
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return ids


# -- clients --------------------------------------------------------------------------------


async def open_clients(
    urls: str | Sequence[str],
    tokens: Sequence[str],
    *,
    concurrency: int = 200,
    timeout_s: float = 120.0,
    **options: Any,
) -> list[StreamClient]:
    """A started, greeted `StreamClient` per token, at most `concurrency` handshakes at once."""
    gate = asyncio.Semaphore(concurrency)
    clients = [StreamClient(urls, token=t, **options) for t in tokens]

    async def one(client: StreamClient) -> None:
        async with gate:
            client.start()
            await client.wait_connected()

    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(one(c) for c in clients))
    except TimeoutError:
        done = sum(c.connected for c in clients)
        await close_clients(clients)
        raise BenchError(
            f"only {done} of {len(clients)} sockets connected in {timeout_s:g} s"
        ) from None
    except BaseException:
        await close_clients(clients)
        raise
    return clients


async def close_clients(clients: Iterable[StreamClient]) -> None:
    await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


# -- processes ------------------------------------------------------------------------------


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB (Linux /proc; psutil is not a dependency)."""
    found = {"VmRSS": 0.0, "VmHWM": 0.0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in found:
            found[name] = int(value.split()[0]) / 1024
    return found["VmRSS"], found["VmHWM"]


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE (the children inherit it) to `wanted`, or the
    hard limit if lower; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def elapsed_ms(since: float) -> float:
    return (time.monotonic() - since) * 1000


# -- the ledger -----------------------------------------------------------------------------

VISIBLE_EVENTS = """
SELECT u.user_id, array_agg(e.id ORDER BY e.id) AS ids
FROM unnest($2::text[]) AS u(user_id)
JOIN chat_events e ON e.tenant_id = $1 AND (
    u.user_id = ANY(e.audience)
    OR (e.kind = 'message.created' AND (
        EXISTS (SELECT 1 FROM chat_recipients r
                WHERE r.message_id = e.message_id AND r.user_id = u.user_id)
        OR EXISTS (SELECT 1 FROM chat_messages m
                   WHERE m.id = e.message_id AND m.sender_id = u.user_id)))
)
GROUP BY u.user_id
"""
"""Per user, the committed events they may see: `audience`, or for `message.created` the
sender and the recipients of the message's copies (relaybox.common.chat.events)."""


async def committed_events(dsn: str, users: Sequence[str]) -> dict[str, set[int]]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(VISIBLE_EVENTS, TENANT, list(users), timeout=300)
    finally:
        await conn.close()
    found: dict[str, set[int]] = {user: set() for user in users}
    for row in rows:
        found[row["user_id"]] = set(row["ids"])
    return found


@dataclass(frozen=True)
class LedgerCheck:
    """Per user: events committed against events received (no gap, no duplicate)."""

    users: int
    committed: int
    received: int
    missing: int
    unexpected: int
    duplicates: int
    users_short: int
    examples: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.duplicates)


def check_ledger(
    committed: dict[str, set[int]],
    received: dict[str, list[int]],
    dropped: dict[str, int],
) -> LedgerCheck:
    """`received`: the event ids each user's client handed out, in order; `dropped`: the
    duplicates the client dropped (what the server sent twice)."""
    missing = unexpected = duplicates = short = 0
    examples: list[str] = []
    for user, expected in committed.items():
        got = received.get(user, [])
        seen = set(got)
        twice = len(got) - len(seen) + dropped.get(user, 0)
        lost, extra = expected - seen, seen - expected
        missing += len(lost)
        unexpected += len(extra)
        duplicates += twice
        if lost or extra or twice:
            short += 1
            if len(examples) < 5:
                examples.append(
                    f"{user}: {len(expected)} committed, {len(got)} received, missing "
                    f"{sorted(lost)[:5]}, unexpected {sorted(extra)[:5]}, duplicates {twice}"
                )
    return LedgerCheck(
        users=len(committed),
        committed=sum(len(v) for v in committed.values()),
        received=sum(len(v) for v in received.values()),
        missing=missing,
        unexpected=unexpected,
        duplicates=duplicates,
        users_short=short,
        examples=examples,
    )
