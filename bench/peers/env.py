"""The settings the peers' processes read from their environment (set by the benchmark)."""

from __future__ import annotations

import os

DATABASE_URL = "PEERS_DATABASE_URL"  # libpq form: postgresql://user@host:port/db
AMQP_URL = "PEERS_AMQP_URL"
QUEUE = "PEERS_QUEUE"  # the run's own queue name (bench.<tag>.<build>)
SMTP_HOST = "PEERS_SMTP_HOST"
SMTP_PORT = "PEERS_SMTP_PORT"
CELERY_ACKS_LATE = "PEERS_CELERY_ACKS_LATE"  # "1": task_acks_late + task_reject_on_worker_lost

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS peer_emails (
    id uuid PRIMARY KEY,
    to_address text NOT NULL,
    subject text NOT NULL,
    text_body text,
    status text NOT NULL DEFAULT 'PENDING',
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz
)
"""


def get(name: str, default: str | None = None) -> str:
    """A setting; a missing one without a default is an error naming it."""
    value = os.environ.get(name, default)
    if value is None:
        raise RuntimeError(f"{name} is not set (the peers run under python -m bench.peers)")
    return value
