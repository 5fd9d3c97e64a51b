"""Fixtures every kind of test shares: the database backend a test runs on.

A test that uses `databases` (directly or through a fixture) runs on SQLite; marked
`@pytest.mark.postgresql` (or a module's pytestmark) it runs once per backend, SQLite and PostgreSQL
(tests/support/databases.py), with `[sqlite]` / `[postgresql]` in its id (`-m postgresql -k "not sqlite"`
runs only the PostgreSQL variants).
Only the tests where the backend matters are marked (stores, concurrency, the contract of each
service, the mesh's main path and recovery), which keeps the suite's wall time in bounds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.databases import BACKENDS, SERVER, Databases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("postgresql"):
        metafunc.parametrize("backend", BACKENDS, scope=_backend_scope(metafunc))


def _backend_scope(metafunc: pytest.Metafunc) -> str:
    """Module scope when a module-scoped fixture needs the backend (one mesh per backend per module)."""
    scoped = metafunc.definition.get_closest_marker("postgresql")
    return str(scoped.kwargs.get("scope", "function")) if scoped else "function"


@pytest.fixture
def backend() -> str:
    """SQLite, unless the test is marked postgresql (then pytest_generate_tests gives both)."""
    return "sqlite"


@pytest.fixture
def databases(backend: str, tmp_path: Path) -> Iterator[Databases]:
    made = Databases(backend, tmp_path)
    try:
        yield made
    finally:
        made.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    SERVER.close()
