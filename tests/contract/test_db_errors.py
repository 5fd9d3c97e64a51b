"""db_retry's classification of real PostgreSQL errors (services/kit/db.py), through both drivers.

A real deadlock (two transactions locking two rows in opposite orders) must be retriable, and a real
CHECK violation must not; db_retry then reruns a deadlocked transaction until it commits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.db import Database, db_retry, is_retriable, make_engine, sqlstate
from tests.support.databases import Databases

pytestmark = pytest.mark.contract


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    databases = Databases("postgresql", tmp_path)
    made = make_engine(databases.empty_url("errors"))
    try:
        async with made.begin() as conn:
            await conn.execute(text("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL CHECK (n >= 0))"))
            await conn.execute(text("INSERT INTO counters VALUES (1, 0), (2, 0)"))
        yield made
    finally:
        await made.dispose()
        databases.close()


async def deadlock(engine: AsyncEngine) -> list[BaseException | None]:
    """Two transactions that lock rows 1,2 and 2,1: PostgreSQL aborts one of them (40P01)."""
    both_locked = asyncio.Barrier(2)

    async def cross(first: int, second: int) -> None:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE counters SET n = n + 1 WHERE id = :id"), {"id": first})
            await both_locked.wait()
            await conn.execute(text("UPDATE counters SET n = n + 1 WHERE id = :id"), {"id": second})

    outcomes = await asyncio.gather(cross(1, 2), cross(2, 1), return_exceptions=True)
    return [o if isinstance(o, BaseException) else None for o in outcomes]


async def test_a_deadlock_is_retriable_and_a_check_violation_is_not(engine: AsyncEngine) -> None:
    errors = [e for e in await deadlock(engine) if e is not None]
    assert len(errors) == 1 and isinstance(errors[0], DBAPIError), errors
    assert sqlstate(errors[0]) == "40P01" and is_retriable(errors[0])

    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE counters SET n = -1 WHERE id = 1"))
    assert sqlstate(caught.value) == "23514" and not is_retriable(caught.value)

    calls = 0

    async def once_failing() -> None:  # db_retry reruns what a deadlock aborted, and stops there
        nonlocal calls
        calls += 1
        if calls == 1:
            errors = [e for e in await deadlock(engine) if e is not None]
            raise errors[0]

    await db_retry(once_failing)
    assert calls == 2


async def test_the_sync_driver_errors_carry_the_sqlstate_too(engine: AsyncEngine) -> None:
    db = Database(engine.url.render_as_string(hide_password=False), pool_size=1)
    try:
        with pytest.raises(DBAPIError) as caught:
            await db.transaction(lambda conn: conn.execute(text("UPDATE counters SET n = -1 WHERE id = 1")))
    finally:
        await db.dispose()
    assert type(caught.value.orig).__module__.startswith("psycopg")
    assert sqlstate(caught.value) == "23514" and not is_retriable(caught.value)
