"""OpenTelemetry tracer provider, and the cheap trace context of a request without a span.

Spans are recorded where a service opts in; trace context always flows through the outbox: a
request's context is the caller's (`traceparent` header) or, without one, a minted W3C context,
so the consumer continues one trace per email either way.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

_configured = False
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def configure_tracing(service: str, *, console: bool = False) -> None:
    """Install an SDK tracer provider once per process (exporters are opt-in)."""
    global _configured
    if _configured:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"relaybox-{service}"}))
    if console:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True


def minted_context() -> Context:
    """A new W3C trace (random trace and span ids, sampled) with no recorded span."""
    span = SpanContext(
        trace_id=random.getrandbits(128) or 1,
        span_id=random.getrandbits(64) or 1,
        is_remote=False,
        trace_flags=_SAMPLED,
    )
    return trace.set_span_in_context(NonRecordingSpan(span))


def request_context(carrier: Mapping[str, str]) -> Context:
    """The caller's trace context (`traceparent`, `tracestate`, `baggage` in `carrier`) when it
    carries a valid one, else a minted one: what the outbox headers will hold, without a span."""
    if "traceparent" in carrier:
        context = propagate.extract(carrier)
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
    return minted_context()
