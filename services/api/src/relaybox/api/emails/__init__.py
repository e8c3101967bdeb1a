"""Queued email: POST /send and the delivery log."""
