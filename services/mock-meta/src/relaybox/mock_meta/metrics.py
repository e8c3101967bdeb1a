"""Prometheus metrics of the mock providers (served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter

META_SENDS = Counter(
    "relaybox_mock_meta_sends_total",
    "POST /messages answers of the Meta-like mock",
    ("outcome",),  # accepted, deduplicated, invalid, failed, rate_limited
)
META_WEBHOOKS = Counter(
    "relaybox_mock_meta_webhooks_total",
    "Webhook deliveries of the Meta-like mock (after retries)",
    ("type", "outcome"),  # type: status, message; outcome: sent, failed
)
META_WEBHOOK_RETRIES = Counter(
    "relaybox_mock_meta_webhook_retries_total", "Webhook attempts retried by the Meta-like mock"
)
