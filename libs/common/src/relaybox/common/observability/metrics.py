"""Metric helpers shared by services."""

from __future__ import annotations

from prometheus_client import Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def latency_histogram(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Histogram:
    """A seconds histogram with buckets fit for sub-millisecond to multi-second work."""
    return Histogram(name, documentation, labels, buckets=LATENCY_BUCKETS)
