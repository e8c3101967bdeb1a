"""Logging, metrics, tracing and the small health/metrics HTTP server of workers."""
