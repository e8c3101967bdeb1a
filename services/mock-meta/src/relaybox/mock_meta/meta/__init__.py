"""The Meta-like messaging API: sends, status and inbound webhooks (signed), failure switches."""
