"""Integration tests: mocks."""
