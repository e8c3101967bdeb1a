"""Consumers: take messages off the work queues and send them through rate-limited providers."""
