"""Per-client limit of the sending endpoints (429 + Retry-After): a fixed window per client.

Applied by `relaybox.api.middleware.access_policy_middleware` to the routes that ask for it
(`requires(..., rate_limited=True)`): they share one budget per client.

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
        self._policy = f"{limit}; w={window_s}"

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

    def headers(self, remaining: int, reset_in: int) -> dict[str, str]:
        """The RateLimit-* headers of an answer (IETF draft)."""
        return {
            "RateLimit-Policy": self._policy,
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(reset_in),
        }

    def raw_headers(self, remaining: int, reset_in: int) -> list[tuple[bytes, bytes]]:
        """`headers` as ASGI header pairs."""
        return [
            (k.lower().encode(), v.encode()) for k, v in self.headers(remaining, reset_in).items()
        ]
