"""Kill -9 the publisher and consumer at random moments while mail flows: nothing is lost.

A smoke run by default; `make chaos` sets RELAYBOX_CHAOS_SOAK=1 for the long soak. The kill times
are random (seed printed), the assertions are the invariants, which hold whatever the timing.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.consumer.settings import ConsumerSettings
from relaybox.mock_meta.smtp_sink import SmtpSink
from tests.chaos.test_crashes import accept_many
from tests.support.pipeline import wait_final
from tests.support.processes import service_env, start_service

pytestmark = pytest.mark.chaos
SOAK = os.environ.get("RELAYBOX_CHAOS_SOAK") == "1"


async def test_random_kills_lose_nothing_and_duplicate_only_per_kill(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
) -> None:
    emails, kills = (400, 15) if SOAK else (40, 3)
    seed = int(os.environ.get("RELAYBOX_CHAOS_SEED", random.randrange(1 << 30)))
    print(f"chaos seed {seed} (RELAYBOX_CHAOS_SEED to replay)")
    rng = random.Random(seed)
    ids = await accept_many(client, emails)
    env = service_env(db_settings, broker_settings, smtp__port=sink.port, lease_s=1.5)
    modules = {"publisher": "relaybox.publisher", "consumer": "relaybox.consumer"}
    procs = {name: await start_service(module, env) for name, module in modules.items()}
    consumer_kills = 0
    try:
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.3, 2.5))
            victim = rng.choice(sorted(procs))
            procs[victim].kill()
            consumer_kills += victim == "consumer"
            await procs[victim].wait()
            procs[victim] = await start_service(modules[victim], env)
        final = await wait_final(engine, emails, timeout=240 if SOAK else 90)
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
    assert final == dict.fromkeys(ids, "SENT")
    per_email = Counter(m.message_id for m in sink.store.find())
    assert set(per_email) == {f"<{i}@relaybox>" for i in ids}
    # Only a consumer killed between "provider accepted" and "SENT recorded" repeats a send: at
    # most once per kill for each email, and at most `prefetch` emails per kill.
    assert max(per_email.values()) <= 1 + consumer_kills, per_email.most_common(3)
    duplicates = sum(n - 1 for n in per_email.values())
    assert duplicates <= consumer_kills * ConsumerSettings().prefetch
