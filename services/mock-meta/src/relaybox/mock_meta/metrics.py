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
EMAIL_API_SENDS = Counter(
    "relaybox_mock_email_api_sends_total",
    "POST /email-api/send-email answers of the email API mock",
    ("outcome",),  # accepted, invalid, unauthorized, unprocessable, rate_limited, failed
)
EMAIL_API_TOKENS = Counter(
    "relaybox_mock_email_api_tokens_total",
    "POST /email-api/auth/token answers of the email API mock",
    ("outcome",),  # issued, invalid_credentials, invalid_request
)
PUSH_SENDS = Counter(
    "relaybox_mock_push_sends_total",
    "POST /push/v1/messages:send answers of the push gateway mock",
    (
        "outcome",
    ),  # accepted, unauthenticated, invalid, rate_limited, simulated_failure, unregistered
)
PUSH_RECEIPTS = Counter(
    "relaybox_mock_push_receipts_total",
    "Delivery receipts of the push gateway mock (after retries)",
    ("outcome",),  # sent, failed, lost (an accepted push never delivered)
)
PUSH_RECEIPT_RETRIES = Counter(
    "relaybox_mock_push_receipt_retries_total", "Receipt attempts retried by the push gateway mock"
)
