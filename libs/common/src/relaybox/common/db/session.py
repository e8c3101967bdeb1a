"""Engine and session factory: one AsyncSession per task, expire_on_commit=False."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from relaybox.common.settings import DatabaseSettings


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An asyncpg engine sized from the settings."""
    return create_async_engine(
        settings.url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_pre_ping=settings.pool_pre_ping,
        echo=settings.echo,
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def asyncpg_dsn(url: str) -> str:
    """The plain libpq URL asyncpg.connect() takes (for LISTEN connections)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
