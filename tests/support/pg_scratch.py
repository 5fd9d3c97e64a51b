"""A scratch PostgreSQL database for one test: created with a unique name, dropped afterwards.

The machine's PostgreSQL (TRIPMESH_TEST_POSTGRES, default postgresql://postgres@127.0.0.1:5432) with
trust auth; a test that needs it is skipped when nothing answers there, except under CI (CI=true),
where PostgreSQL is part of the machine and its absence fails the test.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

SERVER = os.environ.get("TRIPMESH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


@contextlib.asynccontextmanager
async def scratch_database(prefix: str = "tm_lease") -> AsyncIterator[str]:
    """Yield an asyncpg SQLAlchemy URL of a new, empty database; drop it (and its sessions) after."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        admin = await asyncpg.connect(f"{SERVER}/postgres", timeout=3)
    except (OSError, asyncpg.PostgresError) as error:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"no PostgreSQL at {SERVER}: {error}; CI must run the PostgreSQL tests", pytrace=False)
        pytest.skip(f"no PostgreSQL at {SERVER}: {error}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{SERVER.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
