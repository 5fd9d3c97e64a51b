"""Alembic migrations for every database tripmesh keeps, run programmatically (no alembic.ini, no env.py).

Each kind of database has its own migration tree beside its models:

    services/flight/migrations/versions/0001_initial.py, 0002_....py     (flight)
    services/hotel/migrations/versions/...                                (hotel)
    services/payment/migrations/versions/...                              (payment)
    services/notify/migrations/versions/...                               (notify)
    services/car/migrations/versions/...                                  (car)
    coordinator/migrations/versions/...                                   (coordinator: the step log)

Revision ids are `NNNN_<what>`; a new revision takes the next number and names the previous head as
its down_revision. Revision 1 is the schema as `metadata.create_all` made it before migrations
existed, so a database created that way is adopted: it is stamped at revision 1, then upgraded.

`migrate` upgrades one database to head (or a given revision) and then writes the component's seed
rows, all in one transaction; on PostgreSQL that transaction first takes an advisory lock, so several
processes starting at once (coordinator replicas) migrate and seed once. Services call it on start
(TRIPMESH_<C>_MIGRATE=on, the default); `tripmesh migrate` calls it explicitly.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from services.kit.db import database_url, make_engine, sqlstate

VERSION_TABLE = "alembic_version"


@dataclass(frozen=True)
class Kind:
    """One kind of database: where its models, migrations and seed live (imported only when used)."""

    component: str
    package: str  # the package whose migrations/ folder holds the revisions
    models: str  # module with a `metadata`
    seed: str | None = None  # "module:function", a function of a (sync) Connection
    first_table: str = "reservations"  # a table revision 1 creates: present without a version = adopt

    @property
    def script_location(self) -> Path:
        module = importlib.import_module(self.package)
        assert module.__file__ is not None
        return Path(module.__file__).parent / "migrations"

    def metadata(self) -> MetaData:
        metadata: MetaData = importlib.import_module(self.models).metadata
        return metadata

    def seeder(self) -> Callable[[Connection], None] | None:
        if self.seed is None:
            return None
        module, _, name = self.seed.partition(":")
        function: Callable[[Connection], None] = getattr(importlib.import_module(module), name)
        return function


KINDS = {
    kind.component: kind
    for kind in (
        Kind("flight", "services.flight", "services.flight.models", "services.flight.catalogue:seed_catalogue"),
        Kind("hotel", "services.hotel", "services.hotel.models", "services.hotel.catalogue:seed_catalogue"),
        Kind("payment", "services.payment", "services.payment.models", "services.payment.seed:seed"),
        Kind("notify", "services.notify", "services.notify.models"),
        Kind("car", "services.car", "services.car.models", "services.car.catalogue:seed_catalogue"),
        Kind("coordinator", "coordinator", "coordinator.models", first_table="trips"),
    )
}

FIRST_REVISION = "0001_initial"


@dataclass(frozen=True)
class Migrated:
    component: str
    before: str | None  # the revision the database was at (None: empty)
    after: str | None
    adopted: bool = False  # an unversioned database made by create_all, stamped at revision 1 first

    @property
    def changed(self) -> bool:
        return self.before != self.after or self.adopted


class SchemaOutOfDateError(RuntimeError):
    """The database is not at the revision this code needs, and migrating on start is off."""


def kind(component: str) -> Kind:
    try:
        return KINDS[component]
    except KeyError:
        raise ValueError(f"unknown component {component!r}; one of {', '.join(KINDS)}") from None


def script_directory(component: str) -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(kind(component).script_location))
    return ScriptDirectory.from_config(config)


def head(component: str) -> str:
    revision = script_directory(component).get_current_head()
    assert revision is not None, component
    return revision


def _current(sync_conn: Connection) -> str | None:
    return MigrationContext.configure(sync_conn).get_current_revision()


def _upgrade(sync_conn: Connection, component: str, target: str) -> tuple[str | None, str | None, bool]:
    """Upgrade on this connection (inside the caller's transaction); (before, after, adopted)."""
    config = Config()
    config.set_main_option("script_location", str(kind(component).script_location))
    script = ScriptDirectory.from_config(config)
    tables = set(inspect(sync_conn).get_table_names())
    before = _current(sync_conn)
    adopted = before is None and kind(component).first_table in tables
    if adopted:
        MigrationContext.configure(sync_conn).stamp(script, FIRST_REVISION)
        before = FIRST_REVISION

    def upgrade(revision: Any, _context: Any) -> Any:
        return script._upgrade_revs(target, revision)

    with EnvironmentContext(config, script, fn=upgrade, destination_rev=target) as environment:
        environment.configure(
            connection=sync_conn, target_metadata=kind(component).metadata(), version_table=VERSION_TABLE
        )
        with environment.begin_transaction():
            environment.run_migrations()
    return before, _current(sync_conn), adopted


def _lock_key(component: str) -> int:
    return zlib.crc32(f"tripmesh-migrate-{component}".encode())


async def migrate(engine: AsyncEngine, component: str, *, target: str = "head", seed: bool = True) -> Migrated:
    """Bring `engine`'s database to `target` and write the seed rows it lacks, in one transaction."""
    sqlite = engine.dialect.name == "sqlite"
    async with engine.connect() as conn:
        if sqlite:
            # SQLite alters a table by copying it (batch mode): dropping the old copy must not cascade
            # or fail on foreign keys. The pragma is ignored inside a transaction, so it goes first.
            await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await conn.commit()
        try:
            async with conn.begin():
                if engine.dialect.name == "postgresql":
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(component)})
                before, after, adopted = await conn.run_sync(_upgrade, component, target)
                seeder = kind(component).seeder() if seed else None
                if seeder is not None:
                    await conn.run_sync(seeder)
                if sqlite:
                    broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
                    if broken:
                        raise RuntimeError(f"{component}: migration broke foreign keys: {broken[:5]}")
        finally:
            if sqlite:
                await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                await conn.commit()
    return Migrated(component, before, after, adopted)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def ensure_current(engine: AsyncEngine, component: str) -> None:
    """With migrations off: refuse to run on a database that is not at this code's head revision."""
    found, wanted = await current_revision(engine), head(component)
    if found != wanted:
        raise SchemaOutOfDateError(
            f"the {component} database is at revision {found or 'none'}, this tripmesh needs {wanted}: "
            f"run `tripmesh migrate --component {component}` (or set TRIPMESH_{component.upper()}_MIGRATE=on)"
        )


async def prepare(engine: AsyncEngine, component: str, *, migrate_on_start: bool) -> Migrated | None:
    """What a service does on start: migrate (and seed), or check that someone did."""
    if migrate_on_start:
        return await migrate(engine, component)
    await ensure_current(engine, component)
    return None


def schema_drift(sync_conn: Connection, component: str) -> list[Any]:
    """Differences between the migrated database and the models (empty when they agree)."""
    context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
    diffs: list[Any] = compare_metadata(context, kind(component).metadata())
    return diffs


async def ensure_database(url: str) -> bool:
    """Create the PostgreSQL database `url` names if it does not exist (SQLite files create themselves).

    Connects to the server's `postgres` database to do it; True if it was created.
    """
    parsed = database_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return False
    server = create_async_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with server.connect() as conn:
            found = await conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": parsed.database}
            )
            if found:
                return False
            try:
                await conn.exec_driver_sql(f'CREATE DATABASE "{_identifier(parsed.database)}"')
            except DBAPIError as error:
                if sqlstate(error) == "42P04":  # created meanwhile by another process
                    return False
                raise
            return True
    finally:
        await server.dispose()


def _identifier(name: str) -> str:
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"database name {name!r}: letters, digits, _ and - only")
    return name


async def migrate_databases(databases: dict[str, str], *, target: str = "head") -> list[tuple[Migrated, str]]:
    """`tripmesh migrate`: each {component: URL or SQLite path} created if missing, migrated and seeded."""
    done = []
    for component, data in databases.items():
        url = data if "://" in data else f"sqlite+aiosqlite:///{data}"
        kind(component)
        await ensure_database(url)
        engine = make_engine(url)
        try:
            done.append((await migrate(engine, component, target=target), database_url(url).render_as_string()))
        finally:
            await engine.dispose()
    return done
