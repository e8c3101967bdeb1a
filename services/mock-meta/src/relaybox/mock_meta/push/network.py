"""The simulated network of the push mock: latency draws, offline windows, dead tokens.

Every random draw happens while a request is handled, synchronously, from one of four seeded
streams (failures, loss, answer and receipt latency), so a seed replays the same decisions for
the same calls whatever the event loop does later, and one switch never shifts another's draws.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from relaybox.mock_meta.push.models import (
    MAX_LATENCY_MS,
    DeviceOverride,
    Exponential,
    Fixed,
    Latency,
    LogNormal,
    OfflineWindow,
    PushConfig,
    Uniform,
)

DEAD_PREFIX = "dead-"  # any token starting with it is unregistered
FOREVER = math.inf  # an offline window without an end
_NO_OVERRIDE = DeviceOverride()


@dataclass(slots=True)
class Streams:
    """The seeded random streams: one per kind of decision."""

    failures: random.Random
    loss: random.Random
    answer_latency: random.Random
    receipt_latency: random.Random

    @classmethod
    def seeded(cls, seed: int) -> Streams:
        """Each stream seeded from `seed` and its own name."""
        names = ("failures", "loss", "answer_latency", "receipt_latency")
        return cls(*(random.Random(f"{seed}/{name}") for name in names))


def draw_ms(latency: Latency, rng: random.Random) -> float:
    """One latency in milliseconds, clamped to [0, 60 s]."""
    match latency:
        case Fixed(ms=ms):
            value = ms
        case Uniform(min_ms=low, max_ms=high):
            value = rng.uniform(low, high)
        case Exponential(mean_ms=mean):
            value = rng.expovariate(1 / mean) if mean > 0 else 0.0
        case LogNormal(median_ms=median, sigma=sigma):
            value = rng.lognormvariate(math.log(median), sigma)
    return min(max(value, 0.0), MAX_LATENCY_MS)


def device(config: PushConfig, token: str) -> DeviceOverride:
    """The token's override, or one that changes nothing."""
    return config.devices.get(token, _NO_OVERRIDE)


def is_unregistered(config: PushConfig, token: str) -> bool:
    """A `dead-` token, a listed one, or one whose override says so."""
    return (
        token.startswith(DEAD_PREFIX)
        or token in config.unregistered_tokens
        or device(config, token).unregistered
    )


def offline_until(windows: tuple[OfflineWindow, ...], now: float) -> float | None:
    """None when no window covers `now`; else the earliest end of those that do (FOREVER for a
    window without an end). The caller looks again then: windows may chain."""
    ends = [
        FOREVER if window.end is None else window.end
        for window in windows
        if (window.start is None or window.start <= now)
        and (window.end is None or now < window.end)
    ]
    return min(ends) if ends else None
