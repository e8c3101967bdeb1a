"""The realtime service's Prometheus metrics (served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("relaybox_realtime_connections", "open client sockets")
USERS = Gauge("relaybox_realtime_bound_users", "users whose events this replica is bound to")
REFUSED = Counter(
    "relaybox_realtime_refused_total", "upgrades refused before the handshake", ["status"]
)
FRAMES = Counter("relaybox_realtime_frames_total", "frames queued to clients", ["type"])
LIVE_EVENTS = Counter("relaybox_realtime_live_events_total", "event messages from the broker")
DUPLICATES = Counter(
    "relaybox_realtime_duplicates_total", "events not sent because the client already had them"
)
SLOW_CLOSES = Counter(
    "relaybox_realtime_slow_closes_total", "clients closed with 4008 (send buffer full)"
)
REPLAY_SECONDS = Histogram(
    "relaybox_realtime_replay_seconds",
    "time from a socket's start to its replay's end",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REPLAYED = Counter("relaybox_realtime_replayed_events_total", "events sent from PostgreSQL")
RESYNCS = Counter("relaybox_realtime_resyncs_total", "cursors answered with resync", ["reason"])
ACKED = Counter("relaybox_realtime_acked_copies_total", "copies an ack moved to DELIVERED")
ACK_FAILURES = Counter("relaybox_realtime_ack_failures_total", "ack batches that failed (retried)")
CHECKPOINTS = Counter("relaybox_realtime_checkpoints_total", "checkpoint markers consumed")
