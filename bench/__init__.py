"""Benchmarks of relaybox against raw baselines (`python -m bench`, `make bench`)."""
