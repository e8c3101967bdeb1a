"""Outbox relay throughput: `Relay.drain()` over N rows against a bare aio-pika publish loop.

Both publish the same N messages (same body, headers and properties, persistent, mandatory)
to the same exchange and quorum queue over a robust connection with publisher confirms, in
batches of the relay's `batch_size` awaited together (the relay's own concurrency). The relay
also claims the rows (SELECT … FOR UPDATE SKIP LOCKED) and deletes them after the confirms;
that database work is what the ratio prices. Rounds alternate; medians are reported.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractExchange

from bench.common import (
    BenchError,
    Result,
    Target,
    base_parser,
    bench_database,
    broker_settings,
    delete_topology,
    finish,
    median,
    run_id,
    truncate,
)
from relaybox.common.db.session import asyncpg_dsn
from relaybox.common.messaging.broker import connect
from relaybox.common.messaging.topology import EMAIL_SEND, Topology
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.publisher.relay import Relay
from relaybox.publisher.settings import PublisherSettings

TARGET_RATIO = 1.0
HEADERS = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "x-correlation-id": "bench",
}
FILL = """
INSERT INTO outbox (message_id, destination, routing_key, payload, headers)
SELECT gen_random_uuid(), 'work', $1, jsonb_build_object('id', gen_random_uuid()::text),
       $2::jsonb
FROM generate_series(1, $3)
"""


@dataclass(frozen=True)
class Run:
    kind: str
    messages: int
    seconds: float
    cpu_s: float  # CPU of this process (the publisher side) over the run

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.messages * 1e6


async def fill_outbox(database_url: str, count: int) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        await conn.execute(FILL, EMAIL_SEND, json.dumps(HEADERS), count)
        await conn.execute("VACUUM ANALYZE outbox")
    finally:
        await conn.close()


async def queue_depth(channel: AbstractChannel, name: str) -> int:
    queue = await channel.declare_queue(name, passive=True)
    return queue.declaration_result.message_count or 0


async def settle_and_purge(channel: AbstractChannel, name: str, expected: int) -> None:
    """Check every message reached the work queue, then empty it for the next run."""
    deadline = time.monotonic() + 10
    while (depth := await queue_depth(channel, name)) < expected:
        if time.monotonic() > deadline:
            raise BenchError(f"{name} holds {depth} messages, expected {expected}")
        await asyncio.sleep(0.1)
    await (await channel.get_queue(name)).purge()


async def relay_run(settings: PublisherSettings, database_url: str, count: int) -> Run:
    await truncate(database_url)
    await fill_outbox(database_url, count)
    relay = Relay(settings)
    await relay.start(connect_attempts=3)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        published = await relay.drain()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await relay.close()
    if published != count:
        raise BenchError(f"the relay published {published} of {count} rows")
    return Run("relay", count, elapsed, cpu)


def bare_rows(count: int) -> list[dict[str, Any]]:
    """What the relay reads from its rows, prepared in memory."""
    now = datetime.now(UTC)
    return [
        {
            "message_id": uuid.uuid4(),
            "routing_key": EMAIL_SEND,
            "payload": {"id": str(uuid.uuid4())},
            "headers": HEADERS,
            "created_at": now,
        }
        for _ in range(count)
    ]


async def publish_one(exchange: AbstractExchange, row: dict[str, Any]) -> None:
    message = aio_pika.Message(
        body=json.dumps(row["payload"], separators=(",", ":")).encode(),
        message_id=str(row["message_id"]),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        timestamp=row["created_at"],
        headers=dict(row["headers"]),
    )
    await exchange.publish(message, routing_key=row["routing_key"], mandatory=True, timeout=10)


async def bare_run(broker: BrokerSettings, batch_size: int, count: int) -> Run:
    rows = bare_rows(count)
    connection = await connect(broker.url, attempts=3, name="relaybox-bench-bare")
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = (await Topology.from_settings(broker).declare(channel))[
            Topology.from_settings(broker).exchange
        ]
        started, cpu = time.perf_counter(), time.process_time()
        for first in range(0, count, batch_size):
            await asyncio.gather(
                *(publish_one(exchange, row) for row in rows[first : first + batch_size])
            )
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await connection.close()
    return Run("bare", count, elapsed, cpu)


async def measure(database_url: str, tag: str, count: int, rounds: int) -> list[Run]:
    broker = broker_settings(tag)
    settings = PublisherSettings(
        database=DatabaseSettings(url=database_url), broker=broker, poll_interval_s=1.0
    )
    topology = Topology.from_settings(broker)
    work_queue = topology.queue(EMAIL_SEND)
    runs: list[Run] = []
    admin = await aio_pika.connect(broker.url, timeout=10)
    try:
        channel = await admin.channel()
        await topology.declare(channel)
        for round_no in range(rounds):
            order = ("bare", "relay") if round_no % 2 == 0 else ("relay", "bare")
            for kind in order:
                if kind == "relay":
                    run = await relay_run(settings, database_url, count)
                else:
                    run = await bare_run(broker, settings.batch_size, count)
                await settle_and_purge(channel, work_queue, count)
                runs.append(run)
    finally:
        await admin.close()
        await delete_topology(broker)
    return runs


def summarize(runs: list[Run], *, count: int, batch_size: int) -> Result:
    rates: dict[str, float] = {}
    rows = []
    for key in ("bare", "relay"):
        mine = [r for r in runs if r.kind == key]
        rates[key] = median([r.rate for r in mine])
        rows.append(
            [
                "bare aio-pika" if key == "bare" else "relay",
                count,
                median([r.seconds for r in mine]),
                rates[key],
                rates[key] / rates["bare"] if key == "relay" else 1.0,
                " ".join(f"{r.rate:.0f}" for r in mine),
                median([r.cpu_us for r in mine]),
            ]
        )
    metrics = {
        "relay_msgs_per_s": round(rates["relay"], 1),
        "bare_msgs_per_s": round(rates["bare"], 1),
        "ratio": round(rates["relay"] / rates["bare"], 3),
        "relay_cpu_us_per_msg": round(median([r.cpu_us for r in runs if r.kind == "relay"]), 1),
        "bare_cpu_us_per_msg": round(median([r.cpu_us for r in runs if r.kind == "bare"]), 1),
        "messages": count,
        "batch_size": batch_size,
        "rounds": len(runs) // 2,
    }
    return Result(
        name="relay",
        columns=["publisher", "messages", "seconds", "msg/s", "ratio", "per round", "cpu µs/msg"],
        rows=rows,
        metrics=metrics,
        targets=[Target("ratio", ">=", TARGET_RATIO)],
        notes=[
            f"batches of {batch_size} (PublisherSettings.batch_size), confirms awaited",
            "cpu µs/msg: this process only (RabbitMQ and PostgreSQL not counted)",
        ],
    )


def run(*, quick: bool = False, count: int | None = None, rounds: int | None = None) -> Result:
    messages = count or (2_000 if quick else 20_000)
    laps = rounds or (1 if quick else 5)
    tag = run_id()
    batch_size = PublisherSettings.model_fields["batch_size"].default
    with bench_database(f"relay_{tag}") as database_url:
        runs = asyncio.run(
            asyncio.wait_for(measure(database_url, tag, messages, laps), 60 + laps * 120)
        )
    return summarize(runs, count=messages, batch_size=batch_size)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--messages", type=int, default=None, help="N (default 20000)")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    result = run(quick=args.quick, count=args.messages, rounds=args.rounds)
    return finish(result, check=args.check)


if __name__ == "__main__":
    sys.exit(main())
