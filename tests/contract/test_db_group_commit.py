"""kit.db.Database on SQLite: transactions queued while the worker is busy share one commit.

Each still behaves as if it had run alone: one that raises is rolled back to its own savepoint and its
caller gets the error; the others commit; nobody hears back before the commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, event
from sqlalchemy.exc import IntegrityError, OperationalError

from services.kit.db import Database
from services.kit.errors import TransientError


@pytest.fixture
async def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path}/group.db")
    await database.transaction(lambda c: c.exec_driver_sql("CREATE TABLE t (k TEXT PRIMARY KEY)"))
    return database


def insert(key: str) -> Callable[[Connection], str]:
    def work(conn: Connection) -> str:
        conn.exec_driver_sql("INSERT INTO t VALUES (?)", (key,))
        return key

    return work


def refuse(conn: Connection) -> str:
    conn.exec_driver_sql("INSERT INTO t VALUES ('refused')")
    raise ValueError("refused after writing")


async def keys(db: Database) -> list[str]:
    return await db.read(lambda c: [row[0] for row in c.exec_driver_sql("SELECT k FROM t ORDER BY k")])


async def test_queued_transactions_share_commits_and_a_failing_one_is_rolled_back_alone(db: Database) -> None:
    commits = 0

    @event.listens_for(db.engine, "commit")
    def count(_conn: Connection) -> None:
        nonlocal commits
        commits += 1

    works: list[Callable[[Connection], str]] = [insert(f"k{i:02}") for i in range(30)] + [
        refuse,
        insert("k00"),
    ]  # the last one: a duplicate key
    results = await asyncio.gather(*(db.transaction(w) for w in works), return_exceptions=True)

    assert results[:30] == [f"k{i:02}" for i in range(30)]
    assert isinstance(results[30], ValueError) and isinstance(results[31], IntegrityError)
    assert await keys(db) == [f"k{i:02}" for i in range(30)]  # nothing of the two that failed
    assert commits < len(works) / 4, f"{commits} commits for {len(works)} queued transactions"
    await db.dispose()


async def test_a_transaction_alone_that_raises_writes_nothing(db: Database) -> None:
    with pytest.raises(ValueError, match="refused after writing"):
        await db.transaction(refuse)
    assert await db.transaction(insert("after")) == "after"
    assert await keys(db) == ["after"]
    await db.dispose()


async def test_a_transaction_after_dispose_fails_instead_of_waiting_forever(db: Database) -> None:
    await db.dispose()
    with pytest.raises(TransientError, match="closing"):
        await asyncio.wait_for(db.transaction(insert("late")), 5)


async def test_a_caller_that_gave_up_before_its_turn_is_not_run(db: Database) -> None:
    def slow(conn: Connection) -> str:
        time.sleep(0.3)  # holds the worker: what is asked meanwhile queues
        return insert("first")(conn)

    first = asyncio.ensure_future(db.transaction(slow))
    await asyncio.sleep(0.05)
    abandoned = asyncio.ensure_future(db.transaction(insert("abandoned")))
    await asyncio.sleep(0.05)
    abandoned.cancel()  # as when a call's deadline passes while it waits for the database
    assert await first == "first"
    assert await db.transaction(insert("after")) == "after"
    assert await keys(db) == ["after", "first"]
    await db.dispose()


async def test_a_database_that_cannot_be_opened_fails_each_caller_instead_of_hanging(tmp_path: Path) -> None:
    (tmp_path / "not-a-file.db").mkdir()  # SQLite cannot open a directory
    broken = Database(f"sqlite:///{tmp_path}/not-a-file.db")
    results = await asyncio.wait_for(
        asyncio.gather(*(broken.transaction(insert(f"k{i}")) for i in range(5)), return_exceptions=True), 10
    )
    assert all(isinstance(r, OperationalError) for r in results), results
    await broken.dispose()
