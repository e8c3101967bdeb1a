"""Which database errors mean "not now" rather than "never": one rule for every service."""

from __future__ import annotations

import asyncpg
import sqlalchemy.exc

_OUTAGES = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # a connect that hangs, no pooled connection in time
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, cancelled
    asyncpg.exceptions.TooManyConnectionsError,
    sqlalchemy.exc.TimeoutError,  # SQLAlchemy's pool checkout
    sqlalchemy.exc.DisconnectionError,
)
_CONTENTION = (
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock
    asyncpg.exceptions.InsufficientResourcesError,
)


def database_outage(exc: BaseException | None) -> bool:
    """The database cannot be reached right now (a restart, a lost connection, an exhausted
    pool), raised directly or wrapped by SQLAlchemy; not: it refused the statement."""
    while exc is not None:
        if isinstance(exc, _OUTAGES):
            return True
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        exc = exc.__cause__
    return False


def transient_database_error(exc: BaseException | None) -> bool:
    """An outage, or contention that a repeat of the same work can get past."""
    while exc is not None:
        if database_outage(exc) or isinstance(exc, _CONTENTION):
            return True
        exc = exc.__cause__
    return False
