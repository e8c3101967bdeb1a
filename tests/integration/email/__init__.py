"""Integration tests: email."""
