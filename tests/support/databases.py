"""Databases for tests, on either backend: SQLite files in the test's tmp dir, or PostgreSQL databases.

The PostgreSQL ones live on the machine's server (TRIPMESH_TEST_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/postgres). Each test gets fresh databases named
tm_test_<session>_<n>_<component>, copied from a per-session template of that component that was
migrated and seeded once (CREATE DATABASE ... TEMPLATE is a file copy, far quicker than migrating and
seeding the flight catalogue again), and dropped after the test (WITH (FORCE), so a connection a
crashed test left open cannot keep one alive). The session drops its templates at the end.

When the server cannot be reached, a PostgreSQL test is skipped on a developer's machine and FAILS in
CI (CI=true), where PostgreSQL is part of the machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import secrets
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.engine import make_url

from services.kit.db import database_url, make_engine
from services.kit.migrate import KINDS, migrate

BACKENDS = ("sqlite", "postgresql")
SERVER_URL = os.environ.get("TRIPMESH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SESSION = f"tm_test_{os.getpid()}_{secrets.token_hex(3)}"

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop (own thread)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _server_url(database: str) -> str:
    return database_url(SERVER_URL).set(database=database).render_as_string(hide_password=False)


async def _admin(*statements: str) -> None:
    import asyncpg  # the driver itself: CREATE/DROP DATABASE cannot run in a transaction

    url = make_url(SERVER_URL)
    conn = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database=url.database or "postgres",
        timeout=5,
    )
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@dataclass
class PostgresServer:
    """The session's view of the server: reachable or not, and the templates made so far."""

    reachable: bool | None = None
    error: str = ""
    templates: dict[str, str] = field(default_factory=dict)
    counter: Iterator[int] = field(default_factory=itertools.count)
    dropper: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="drop-databases")
    )
    dropping: list[concurrent.futures.Future[None]] = field(default_factory=list)

    def require(self) -> None:
        if self.reachable is None:
            try:
                run_sync(_admin("SELECT 1"))
                self.reachable = True
            except (OSError, TimeoutError, ImportError) as error:
                self.reachable, self.error = False, f"{type(error).__name__}: {error}"
            except Exception as error:  # noqa: BLE001 - asyncpg's errors (auth, missing role) are not OSErrors
                self.reachable, self.error = False, f"{type(error).__name__}: {error}"
        if not self.reachable:
            message = f"PostgreSQL is not reachable at {SERVER_URL} ({self.error})"
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(f"{message}: CI must run the PostgreSQL variants", pytrace=False)
            pytest.skip(message)

    def template(self, component: str) -> str:
        """A database of `component` at head with its seed rows, made once per session."""
        if component not in self.templates:
            name = f"{SESSION}_tpl_{component}"
            run_sync(_admin(f'CREATE DATABASE "{name}"'))
            run_sync(_migrate(_server_url(name), component))
            self.templates[component] = name
        return self.templates[component]

    def create(self, component: str) -> str:
        """A new database of `component`, already migrated and seeded; its name."""
        template = self.template(component) if component in KINDS else "template1"
        name = f"{SESSION}_{next(self.counter)}_{component}"
        run_sync(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        return name

    def drop(self, names: list[str]) -> None:
        """Drop the databases in the background: DROP DATABASE waits for a checkpoint (about 0.1-0.5 s
        each), which the next test need not wait for. close() waits until every drop is done."""
        if names:
            statements = [f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in names]
            self.dropping.append(self.dropper.submit(asyncio.run, _admin(*statements)))

    def close(self) -> None:
        if self.reachable:
            self.drop(list(self.templates.values()))
            self.templates.clear()
        for job in self.dropping:
            job.result()
        self.dropping.clear()
        self.dropper.shutdown()


async def _migrate(url: str, component: str) -> None:
    engine = make_engine(url)
    try:
        await migrate(engine, component)
    finally:
        await engine.dispose()


SERVER = PostgresServer()


@dataclass
class Databases:
    """One test's databases on one backend: url(component) makes (once) and returns its URL."""

    backend: str
    directory: Path
    created: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend == "postgresql":
            SERVER.require()

    def url(self, name: str) -> str:
        """SQLite: <dir>/<name>.db (migrated on the service's start). PostgreSQL: a fresh database,
        already migrated and seeded when `name` is a component (services still run migrate on start,
        which then finds nothing to do)."""
        if self.backend == "sqlite":
            return f"sqlite+aiosqlite:///{self.directory}/{name}.db"
        if name not in self.created:
            self.created[name] = SERVER.create(name)
        return _server_url(self.created[name])

    def empty_url(self, name: str) -> str:
        """A database with nothing in it (PostgreSQL: not copied from a template)."""
        if self.backend == "sqlite":
            return f"sqlite+aiosqlite:///{self.directory}/{name}-empty.db"
        key = f"{name}_empty"
        if key not in self.created:
            self.created[key] = SERVER.create(key)
        return _server_url(self.created[key])

    def close(self) -> None:
        if self.backend == "postgresql":
            SERVER.drop(list(self.created.values()))
            self.created.clear()
