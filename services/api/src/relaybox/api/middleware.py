"""The API's two middlewares, around Litestar's JWT authentication:

    edge (outermost) → JWT authentication → access policy → the route handler

- `edge_middleware`: the request id and trace context of the request, the request metrics, one
  access-log line (no bodies, no headers, no secrets) and the response headers inner layers ask
  for (`add_response_headers`).
- `access_policy_middleware`: what a route's `opt` asks of its caller (`relaybox.api.auth
  .requires`): a token scope (403 without it) and a share of the per-client send budget (429).

One send wrapper for all of it: each ASGI middleware layer costs a coroutine and a send wrapper
per request, and the API's hot paths are a few hundred microseconds of CPU in all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable

from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, PermissionDeniedException, TooManyRequestsException
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import context as otel_context

from relaybox.api.auth import RATE_LIMITED, SCOPE, Client
from relaybox.api.metrics import EXCLUDED_PREFIX, RequestMetrics
from relaybox.api.ratelimit import FixedWindowLimiter
from relaybox.common.observability.logging import request_id_var
from relaybox.common.observability.tracing import request_context

log = logging.getLogger("relaybox.api.access")
REQUEST_ID_HEADER = b"x-request-id"
TRACE_HEADERS = frozenset((b"traceparent", b"tracestate", b"baggage"))
_STATE_KEY = "relaybox_request_id"
_HEADERS_KEY = "relaybox_response_headers"
_ID_SENT_KEY = "relaybox_request_id_sent"  # the edge put the id on the response itself
CANCELLED = 499  # the status logged and counted for a request cancelled before its answer
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Headers = list[tuple[bytes, bytes]]


def request_id_of(scope: Scope, incoming: bytes | None = None) -> str:
    """The caller's well-formed X-Request-ID, else a new one; the same one for the whole request."""
    state = scope.setdefault("state", {})
    if (known := state.get(_STATE_KEY)) is not None:
        return str(known)
    if incoming is None:
        incoming = next((v for k, v in scope["headers"] if k == REQUEST_ID_HEADER), b"")
    text = incoming.decode("latin-1")
    request_id = text if _SAFE_ID.match(text) else os.urandom(16).hex()  # as uuid4().hex, bare
    state[_STATE_KEY] = request_id
    return request_id


def add_response_headers(scope: Scope, headers: Headers) -> None:
    """Ask the edge to put `headers` on this request's response (when the handler answers)."""
    scope.setdefault("state", {}).setdefault(_HEADERS_KEY, []).extend(headers)


async def echo_request_id(message: Message, scope: Scope) -> None:
    """`before_send` hook for the answers made before any middleware runs (a 404 or 405 from the
    router) or after (a 401, 403 or 429 raised in a middleware): they carry X-Request-ID too."""
    if message["type"] != "http.response.start" or scope["type"] != ScopeType.HTTP:
        return
    if scope["state"].get(_ID_SENT_KEY):
        return
    headers = list(message.get("headers", []))
    if not any(name.lower() == REQUEST_ID_HEADER for name, _ in headers):
        headers.append((REQUEST_ID_HEADER, request_id_of(scope).encode()))
        message["headers"] = headers


def edge_middleware(*, trace_context: bool) -> Callable[[ASGIApp], ASGIApp]:
    """Request id, trace context, metrics, the access log and response headers, in one layer.

    With `trace_context` (when no OpenTelemetry middleware records request spans) the request
    runs in the caller's trace context (`traceparent`) or a minted one, which is what the
    outbox headers carry to the consumer and the log lines' trace id.

    Runs outermost, so an exception raised further in (a 401 from the JWT middleware) is logged
    and counted with its status.
    """
    metrics = RequestMetrics()

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
            request_id = request_id_of(scope, incoming_id)
            token = request_id_var.set(request_id)
            trace_token = otel_context.attach(request_context(carrier)) if trace_context else None
            method: str = scope["method"]
            path: str = scope["path"]
            measured = not path.startswith(EXCLUDED_PREFIX)
            route: str = scope.get("path_template", path)
            in_progress = metrics.in_progress(method, route) if measured else None
            started = time.perf_counter()
            status = 500

            async def send_with_headers(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers: Headers = [
                        *message.get("headers", ()),
                        *scope["state"].get(_HEADERS_KEY, ()),
                        (REQUEST_ID_HEADER, request_id.encode()),
                    ]
                    message["headers"] = headers
                    scope["state"][_ID_SENT_KEY] = True
                await send(message)

            if in_progress is not None:
                in_progress.inc()
            try:
                await app(scope, receive, send_with_headers)
            except HTTPException as exc:  # answered further out, by the exception handler
                status = exc.status_code
                raise
            except asyncio.CancelledError:  # the server stopping, or the client gone
                status = CANCELLED
                raise
            finally:
                duration = time.perf_counter() - started
                if in_progress is not None:
                    in_progress.dec()
                    metrics.finished(method, route, status, duration)
                log.info(
                    "request",
                    extra={
                        "method": method,
                        "path": path,
                        "status": status,
                        "duration_ms": round(duration * 1000, 2),
                    },
                )
                if trace_token is not None:
                    otel_context.detach(trace_token)
                request_id_var.reset(token)

        return middleware

    return build


def _client_key(scope: Scope) -> str:
    """Whose budget a request spends: the authenticated client's, else its peer address's."""
    user = scope.get("user")
    if isinstance(user, Client):
        return f"client:{user.id}"
    client = scope.get("client")
    return client[0] if client else "127.0.0.1"


def access_policy_middleware(limiter: FixedWindowLimiter) -> Callable[[ASGIApp], ASGIApp]:
    """Enforce the route's `requires(...)` (after authentication): its scope, its rate limit.

    A scope check here rather than a Litestar guard: Litestar copies the route handler for every
    guard call, which cost more than the rest of this middleware.
    """

    def build(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            handler = scope.get("route_handler")
            if scope["type"] == ScopeType.HTTP and handler is not None:
                opt = handler.opt
                if (needed := opt.get(SCOPE)) is not None:
                    user = scope.get("user")
                    if not isinstance(user, Client) or needed not in user.scopes:
                        raise PermissionDeniedException(
                            detail=f"this token lacks the {needed!r} scope"
                        )
                if opt.get(RATE_LIMITED):
                    allowed, remaining, reset_in = limiter.hit(_client_key(scope))
                    if not allowed:
                        raise TooManyRequestsException(headers=limiter.headers(0, reset_in))
                    add_response_headers(scope, limiter.raw_headers(remaining, reset_in))
            await app(scope, receive, send)

        return middleware

    return build
