"""The Celery peer: `celery -A bench.peers.celery_app worker` (Celery's documented way).

Celery's defaults, on purpose: the prefork pool with as many processes as CPUs, a prefetch
multiplier of 4, no result backend, no publisher confirms, and early acknowledgement
(`task_acks_late=False`: the message is acked just before the task runs, so a worker killed
mid-task loses that task; Celery's docs recommend late acks only for idempotent tasks, and
sending an email is not one). `PEERS_CELERY_ACKS_LATE=1` switches to the reliability settings
the docs describe for idempotent tasks (`task_acks_late` + `task_reject_on_worker_lost`).
"""

from __future__ import annotations

from typing import Any

from celery import Celery  # type: ignore[import-untyped]

from bench.peers import env, mail

QUEUE = env.get(env.QUEUE, "bench.peers.celery")
ACKS_LATE = env.get(env.CELERY_ACKS_LATE, "0") == "1"

app: Any = Celery("bench.peers", broker=env.get(env.AMQP_URL, "amqp://guest:guest@127.0.0.1//"))
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,  # the default behaviour, stated to silence a warning
    task_acks_late=ACKS_LATE,
    task_reject_on_worker_lost=ACKS_LATE,
)

send_email: Any = app.task(name="bench.peers.send_email")(mail.deliver)
