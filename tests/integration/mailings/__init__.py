"""Integration tests: mailings."""
