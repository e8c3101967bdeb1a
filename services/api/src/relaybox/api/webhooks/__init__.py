"""Provider webhooks: signed, idempotent Meta-like inbound messages and status events."""
