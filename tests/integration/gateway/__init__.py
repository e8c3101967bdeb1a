"""Integration tests: gateway."""
