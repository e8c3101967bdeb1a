"""Prometheus metrics of the consumer."""

from prometheus_client import Counter, Gauge, Histogram

from relaybox.common.observability.metrics import latency_histogram

OUTCOMES = Counter(
    "relaybox_consumer_messages_total",
    "Messages handled, by route and outcome",
    ("route", "outcome"),
)
SEND_LATENCY = latency_histogram(
    "relaybox_consumer_send_latency_seconds", "Provider call duration", ("provider",)
)
PROVIDER_RESULTS = Counter(
    "relaybox_consumer_provider_results_total",
    "Provider calls by provider and result (accepted, retryable, permanent)",
    ("provider", "result"),
)
RETRIES = Counter(
    "relaybox_consumer_retries_total", "Messages sent to a retry tier", ("route", "tier_ms")
)
DEAD_LETTERED = Counter(
    "relaybox_consumer_dead_lettered_total", "Messages routed to the DLQ", ("route",)
)
ATTEMPTS = Histogram(
    "relaybox_consumer_attempts",
    "Attempts a message took to reach a final status",
    ("route", "status"),
    buckets=(1, 2, 3, 4, 5, 7, 10),
)
IN_FLIGHT = Gauge("relaybox_consumer_in_flight", "Messages being handled right now")
DLQ_DEPTH = Gauge("relaybox_consumer_dlq_depth", "Messages waiting in a DLQ", ("queue",))
# The dead-letter office (the `dead_letters` table the consumer drains every *.dlq queue into).
DEAD_LETTERS_DRAINED = Counter(
    "relaybox_dead_letters_drained_total",
    "Dead letters moved from a DLQ into the dead_letters table (a repeat death counts again)",
    ("route",),
)
DEAD_LETTERS_OPEN = Gauge(
    "relaybox_dead_letters", "Open dead letters (neither replayed nor discarded)", ("route",)
)
DEAD_LETTERS_OLDEST_AGE = Gauge(
    "relaybox_dead_letters_oldest_age_seconds",
    "Age of the oldest open dead letter (its last death), 0 when none is open",
    ("route",),
)
