"""Prometheus metrics of the publisher."""

from prometheus_client import Counter, Gauge

from relaybox.common.observability.metrics import latency_histogram

BACKLOG = Gauge("relaybox_outbox_backlog", "Rows waiting in the outbox")
OLDEST_AGE = Gauge("relaybox_outbox_oldest_age_seconds", "Age of the oldest unpublished row")
CONFIRMS = Counter("relaybox_publisher_confirms_total", "Messages confirmed by the broker")
NACKS = Counter("relaybox_publisher_nacks_total", "Messages nacked by the broker")
RETURNS = Counter("relaybox_publisher_returns_total", "Messages returned as unroutable")
FAILURES = Counter(
    "relaybox_publisher_batch_failures_total", "Batches abandoned on a connection error"
)
PUBLISH_LATENCY = latency_histogram(
    "relaybox_publisher_publish_latency_seconds", "Publish to broker confirm"
)
RELAY_LAG = latency_histogram(
    "relaybox_publisher_relay_lag_seconds", "Outbox insert to broker confirm"
)
