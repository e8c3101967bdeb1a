"""Chat delivery: pushing a batch of a message's recipient copies to their devices."""
