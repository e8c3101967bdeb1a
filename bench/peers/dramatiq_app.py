"""The Dramatiq peer: `dramatiq bench.peers.dramatiq_app` (Dramatiq's documented way).

Dramatiq's defaults: `RabbitmqBroker` (no publisher confirms), the CLI's processes (one per CPU)
and 8 threads each, the default middleware (retries with backoff, age and time limits). Dramatiq
acknowledges a message after the actor returned, so a worker killed mid-task redelivers it.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.peers import env, mail

QUEUE = env.get(env.QUEUE, "bench.peers.dramatiq")

broker = RabbitmqBroker(url=env.get(env.AMQP_URL, "amqp://guest:guest@127.0.0.1:5672/"))
dramatiq.set_broker(broker)

send_email = dramatiq.actor(actor_name="send_email", queue_name=QUEUE)(mail.deliver)
