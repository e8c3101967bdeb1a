"""Per-client limit of the sending endpoints (429 + Retry-After): a fixed window per client.

The semantics of Litestar's RateLimitMiddleware (a window opens at a client's first request and
lasts a minute; at most N requests in it; refused requests do not count; RateLimit-* headers on
every answer), at O(1) per request: Litestar's keeps every timestamp of the window and
JSON-decodes and re-encodes them all on each request. In memory, so per API process (see
docs/architecture.md, known limits).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from litestar.enums import ScopeType
from litestar.exceptions import TooManyRequestsException
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from relaybox.api.auth import Client

OPT_KEY = "rate_limited"  # handlers with opt={"rate_limited": True} share one budget per client
WINDOW_S = 60
_MIN_PRUNE_AT = 1024


@dataclass
class _Window:
    count: int
    reset_at: int  # epoch seconds


class FixedWindowLimiter:
    """At most `limit` requests per client in a window of `window_s` opened by its first one."""

    def __init__(
        self, limit: int, window_s: int = WINDOW_S, clock: Callable[[], float] = time.time
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._prune_at = _MIN_PRUNE_AT

    def hit(self, key: str) -> tuple[bool, int, int]:
        """Count one request of `key`: (allowed, requests left, seconds until the window ends)."""
        now = int(self._clock())
        window = self._windows.get(key)
        if window is None or window.reset_at <= now:
            if len(self._windows) >= self._prune_at:
                self._prune(now)
            window = self._windows[key] = _Window(0, now + self.window_s)
        if window.count >= self.limit:
            return False, 0, window.reset_at - now
        window.count += 1
        return True, self.limit - window.count, window.reset_at - now

    def _prune(self, now: int) -> None:
        """Forget ended windows (memory stays proportional to the clients of one window)."""
        self._windows = {k: w for k, w in self._windows.items() if w.reset_at > now}
        self._prune_at = max(_MIN_PRUNE_AT, 2 * len(self._windows))


def _identifier(scope: Scope) -> str:
    """The authenticated client, else the peer address."""
    user = scope.get("user")
    if isinstance(user, Client):
        return f"client:{user.id}"
    client = scope.get("client")
    return client[0] if client else "127.0.0.1"


def rate_limit_middleware(limiter: FixedWindowLimiter) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware (after authentication) applying `limiter` to the marked handlers."""
    policy = f"{limiter.limit}; w={limiter.window_s}"

    def headers(remaining: int, reset_in: int) -> dict[str, str]:
        return {
            "RateLimit-Policy": policy,
            "RateLimit-Limit": str(limiter.limit),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(reset_in),
        }

    def build(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            handler = scope.get("route_handler")
            if scope["type"] != ScopeType.HTTP or handler is None or not handler.opt.get(OPT_KEY):
                await app(scope, receive, send)
                return
            allowed, remaining, reset_in = limiter.hit(_identifier(scope))
            if not allowed:
                raise TooManyRequestsException(headers=headers(0, reset_in))
            answer_headers = headers(remaining, reset_in)
            extra = [(k.lower().encode(), v.encode()) for k, v in answer_headers.items()]

            async def send_with_headers(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), *extra]
                await send(message)

            await app(scope, receive, send_with_headers)

        return middleware

    return build
