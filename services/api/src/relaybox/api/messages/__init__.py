"""Outbound Meta-like messages: idempotent sends, single messages and retries."""
