"""Fail points: crash the process, or raise, at a named step, so tests hit it deterministically."""

from __future__ import annotations

import logging
import os

from pydantic import BaseModel

from relaybox.common.errors import RelayboxError

log = logging.getLogger(__name__)

CRASH_EXIT_CODE = 70


class InjectedFaultError(RelayboxError):
    """Raised at the fail point named by `raise_at`: an unexpected error, on purpose."""


class FaultSettings(BaseModel):
    """`crash_at` names a fail point where the process exits at once (no clean-up); `raise_at`
    one where an unexpected exception is raised."""

    crash_at: str | None = None
    raise_at: str | None = None


def failpoint(name: str, settings: FaultSettings) -> None:
    """Exit the process immediately, as a kill -9 would, if `name` is the configured crash point;
    raise `InjectedFaultError` if it is the configured raise point."""
    if settings.raise_at == name:
        raise InjectedFaultError(f"fault injected at {name}")
    if settings.crash_at == name:
        log.warning("fail point reached, crashing", extra={"failpoint": name})
        logging.shutdown()
        os._exit(CRASH_EXIT_CODE)
