"""One handler per routing key."""
