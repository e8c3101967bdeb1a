"""Chaos fixtures reuse the integration fixtures (sink, API client, pipeline)."""

from tests.integration.conftest import api_settings, client, pipeline, sink, token

__all__ = ["api_settings", "client", "pipeline", "sink", "token"]
