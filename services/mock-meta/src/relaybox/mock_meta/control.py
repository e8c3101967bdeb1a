"""What every mock's control switches share: the fault plan (the next N calls fail, then a
random share of them), the sliding-window rate limit, and merging a config patch.

Every mock answers the same control scheme under its base path: `GET <base>/config`, `POST
<base>/config` (merges the fields given), `GET <base>/stats`, `GET|DELETE <base>/messages`; the
bases are `/` for the Meta-like API (its seed contract's own paths), `/smtp` for the SMTP sink
and `/email-api/_mock` for the email API (whose contract owns `/email-api`).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")
Config = TypeVar("Config", bound=msgspec.Struct)


def merged(config: Config, patch: msgspec.Struct, *, skip: tuple[str, ...] = ()) -> Config:
    """`config` with every field `patch` gives (not `msgspec.UNSET`), but those in `skip`."""
    changes: dict[str, Any] = {
        name: value
        for name in patch.__struct_fields__
        if name not in skip and (value := getattr(patch, name)) is not msgspec.UNSET
    }
    return msgspec.structs.replace(config, **changes)


def take_failure(
    rng: random.Random,
    *,
    fail_next: int,
    next_failure: T,
    failure_rate: float,
    choices: Sequence[T],
) -> tuple[int, T | None]:
    """The fault plan of one call: the next `fail_next` calls get `next_failure`; after them a
    `failure_rate` share get one of `choices`. Returns what `fail_next` becomes, and the
    failure (None: answer normally)."""
    if fail_next > 0:
        return fail_next - 1, next_failure
    if failure_rate > 0 and rng.random() < failure_rate:
        return fail_next, rng.choice(choices)
    return fail_next, None


class SlidingLog:
    """Moments inside a sliding window `(now - window, now]`: a provider's rate limit."""

    def __init__(self) -> None:
        self._moments: deque[float] = deque()

    def __len__(self) -> int:
        return len(self._moments)

    def prune(self, now: float, window_s: float) -> None:
        """Forget moments that left the window."""
        while self._moments and self._moments[0] <= now - window_s:
            self._moments.popleft()

    def add(self, now: float) -> None:
        """Record one moment."""
        self._moments.append(now)

    def wait_s(self, now: float, window_s: float, limit: int) -> int:
        """Whole seconds (at least 1) until fewer than `limit` moments are in the window."""
        oldest_to_leave = self._moments[len(self._moments) - limit]
        return max(1, math.ceil(oldest_to_leave + window_s - now))

    def admit(self, now: float, window_s: float, limit: int) -> int | None:
        """Take a place in the window (None), or the seconds until one frees; `limit` 0 or less
        admits everything."""
        if limit <= 0:
            return None
        self.prune(now, window_s)
        if len(self) >= limit:
            return self.wait_s(now, window_s, limit)
        self.add(now)
        return None

    def clear(self) -> None:
        """Forget every moment."""
        self._moments.clear()
