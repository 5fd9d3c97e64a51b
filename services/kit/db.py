"""Database plumbing shared by every process: engine, metadata conventions, column types, retries.

SQLite (the embedded default) gets WAL, a busy timeout and a single pooled connection per process, so
transactions of one process are serialised in the pool instead of fighting over the file lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

from sqlalchemy import BigInteger, DateTime, MetaData, String, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import mapped_column
from sqlalchemy.types import TypeDecorator

from services.kit.errors import TransientError

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite drops the zone; this puts it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Id = Annotated[str, mapped_column(String(128), primary_key=True)]
Timestamp = Annotated[datetime, mapped_column(UTCDateTime())]
MinorUnits = Annotated[int, mapped_column(BigInteger)]


def new_metadata() -> MetaData:
    """A MetaData with the naming convention; each database gets its own (services share no tables)."""
    return MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(url: str, *, synchronous: str = "FULL") -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=60)

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


async def create_schema(engine: AsyncEngine, metadata: MetaData) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


T = TypeVar("T")

_RETRIABLE_MARKERS = ("database is locked", "deadlock detected", "could not serialize", "connection")


def is_retriable(error: DBAPIError) -> bool:
    text = str(error.orig).lower()
    return isinstance(error, OperationalError) or any(m in text for m in _RETRIABLE_MARKERS)


async def db_retry(work: Callable[[], Awaitable[T]], *, attempts: int = 4, first_delay: float = 0.02) -> T:
    """Run a transaction, retrying retriable database errors; past the budget raise TransientError."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return await work()
        except DBAPIError as error:
            if not is_retriable(error):
                raise
            if attempt == attempts:
                raise TransientError(f"database unavailable: {error.orig}") from error
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
