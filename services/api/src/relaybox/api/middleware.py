"""Request id, trace context and one access-log line per request (no bodies, no headers, no
secrets)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import context as otel_context

from relaybox.common.observability.logging import request_id_var
from relaybox.common.observability.tracing import request_context

log = logging.getLogger("relaybox.api.access")
REQUEST_ID_HEADER = b"x-request-id"
TRACE_HEADERS = frozenset((b"traceparent", b"tracestate", b"baggage"))
_STATE_KEY = "relaybox_request_id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _request_id(scope: Scope, incoming: bytes | None = None) -> str:
    """The caller's well-formed X-Request-ID, else a new one; the same one for the whole request."""
    state = scope.setdefault("state", {})
    if (known := state.get(_STATE_KEY)) is not None:
        return str(known)
    if incoming is None:
        incoming = next((v for k, v in scope["headers"] if k == REQUEST_ID_HEADER), b"")
    text = incoming.decode("latin-1")
    request_id = text if _SAFE_ID.match(text) else uuid.uuid4().hex
    state[_STATE_KEY] = request_id
    return request_id


async def echo_request_id(message: Message, scope: Scope) -> None:
    """`before_send` hook: every HTTP response carries X-Request-ID, including the ones made by
    an exception raised in a middleware (401, 429) or by the router (404)."""
    if message["type"] != "http.response.start" or scope["type"] != ScopeType.HTTP:
        return
    headers = list(message.get("headers", []))
    if not any(name.lower() == REQUEST_ID_HEADER for name, _ in headers):
        headers.append((REQUEST_ID_HEADER, _request_id(scope).encode()))
        message["headers"] = headers


def request_id_middleware(*, trace_context: bool) -> Callable[[ASGIApp], ASGIApp]:
    """Take a well-formed X-Request-ID or make one; log method, path, status, duration.

    With `trace_context` (when no OpenTelemetry middleware records request spans) the request
    runs in the caller's trace context (`traceparent`) or a minted one, which is what the
    outbox headers carry to the consumer and the log lines' trace id.

    Runs outermost, so an exception raised further in (a 401 from the JWT middleware) is
    logged with its status; `echo_request_id` puts the id on the response.
    """

    def build(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            incoming_id = b""
            carrier: dict[str, str] = {}
            for name, value in scope["headers"]:
                if name == REQUEST_ID_HEADER:
                    incoming_id = value
                elif name in TRACE_HEADERS:
                    carrier[name.decode()] = value.decode("latin-1")
            token = request_id_var.set(_request_id(scope, incoming_id))
            trace_token = otel_context.attach(request_context(carrier)) if trace_context else None
            started = time.perf_counter()
            status = 500

            async def send_with_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_with_status)
            except HTTPException as exc:
                status = exc.status_code
                raise
            finally:
                log.info(
                    "request",
                    extra={
                        "method": scope.get("method", ""),
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )
                if trace_token is not None:
                    otel_context.detach(trace_token)
                request_id_var.reset(token)

        return middleware

    return build
