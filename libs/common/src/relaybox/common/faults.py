"""Fail points: crash the process at a named step so chaos tests can kill it deterministically."""

from __future__ import annotations

import logging
import os

from pydantic import BaseModel

log = logging.getLogger(__name__)

CRASH_EXIT_CODE = 70


class FaultSettings(BaseModel):
    """`crash_at` names a fail point; reaching it exits the process at once (no clean-up)."""

    crash_at: str | None = None


def failpoint(name: str, settings: FaultSettings) -> None:
    """Exit the process immediately, as a kill -9 would, if `name` is the configured fail point."""
    if settings.crash_at == name:
        log.warning("fail point reached, crashing", extra={"failpoint": name})
        logging.shutdown()
        os._exit(CRASH_EXIT_CODE)
