"""Schema migrations (services/kit/migrate.py) on SQLite and PostgreSQL.

For each kind of database: created at revision 1 (the schema as create_all made it before Alembic),
representative rows written with plain SQL, upgraded to head, and the rows read back intact; the
schema at head matches the models exactly; a database made before migrations existed (no version
table) is adopted; a second run changes nothing; with migrations off a service refuses an old schema;
`tripmesh migrate` run twice reports nothing to do the second time.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.flight.app import SPEC as FLIGHT
from services.kit.db import make_engine
from services.kit.migrate import FIRST_REVISION, KINDS, SchemaOutOfDateError, head, migrate, schema_drift
from services.participant.runner import start_participant
from tests.support.databases import Databases

pytestmark = [pytest.mark.contract, pytest.mark.postgresql]

NOW = "2027-03-01 10:00:00+00:00"
RESERVATION = (
    "INSERT INTO reservations (reservation_id, status, fingerprint, details, price_minor, currency, expire_at,"
    " created_at, updated_at, tombstone) VALUES ('{rid}', '{status}', 'fp', '{{\"n\": 1}}', 4200, 'EUR', NULL,"
    f" '{NOW}', '{NOW}', false)"
)
# Per kind: rows as an operator's database at revision 1 would have them, and a query reading them back.
ROWS: dict[str, tuple[list[str], str]] = {
    "flight": (
        [
            RESERVATION.format(rid="t1/flight", status="HELD"),
            "UPDATE flight_cabins SET held = 1 WHERE flight_id = 'TM101-20270315' AND cabin = 'ECONOMY'",
        ],
        "SELECT r.reservation_id, r.status, r.price_minor, c.held FROM reservations r, flight_cabins c"
        " WHERE c.flight_id = 'TM101-20270315' AND c.cabin = 'ECONOMY'",
    ),
    "hotel": (
        [
            RESERVATION.format(rid="t1/hotel", status="CONFIRMED"),
            "UPDATE room_nights SET confirmed = 1 WHERE hotel_id = 'lis-alfama' AND room_type = 'STANDARD'"
            " AND night = '2027-03-15'",
        ],
        "SELECT r.reservation_id, r.status, n.confirmed FROM reservations r, room_nights n"
        " WHERE n.hotel_id = 'lis-alfama' AND n.room_type = 'STANDARD' AND n.night = '2027-03-15'",
    ),
    "payment": (
        [
            RESERVATION.format(rid="t1/payment", status="HELD"),
            "UPDATE payment_methods SET authorized_minor = 4200 WHERE payment_method_id = 'pm_ada_visa'",
            "INSERT INTO ledger (reservation_id, payment_method_id, kind, amount_minor, currency, at)"
            f" VALUES ('t1/payment', 'pm_ada_visa', 'AUTHORIZE', 4200, 'EUR', '{NOW}')",
        ],
        "SELECT r.reservation_id, m.authorized_minor, l.kind, l.amount_minor FROM reservations r, payment_methods m,"
        " ledger l WHERE m.payment_method_id = 'pm_ada_visa' AND l.reservation_id = r.reservation_id",
    ),
    "notify": (
        [
            RESERVATION.format(rid="t1/notify", status="CONFIRMED"),
            "INSERT INTO outbox (reservation_id, recipient, subject, body, state, attempts, created_at)"
            f" VALUES ('t1/notify', 'ada@example.com', 'Your trip', 'Hello', 'PENDING', 0, '{NOW}')",
        ],
        "SELECT r.reservation_id, r.status, o.recipient, o.state FROM reservations r JOIN outbox o"
        " ON o.reservation_id = r.reservation_id",
    ),
    "car": (
        [
            RESERVATION.format(rid="t1/car", status="HELD"),
            "UPDATE car_days SET held = 1 WHERE city = 'Lisbon' AND car_class = 'SUV' AND day = '2027-03-15'",
        ],
        "SELECT r.reservation_id, r.status, d.held FROM reservations r, car_days d"
        " WHERE d.city = 'Lisbon' AND d.car_class = 'SUV' AND d.day = '2027-03-15'",
    ),
    "coordinator": (
        [
            "INSERT INTO trips (trip_id, state, fingerprint, request, customer_id, definition_version,"
            " failure_reason, created_at, updated_at, deadline_at) VALUES ('t1', 'CONFIRMING', 'fp',"
            f" '{{\"a\": 1}}', 'cust-ada', 1, '', '{NOW}', '{NOW}', '{NOW}')",
            "INSERT INTO steps (trip_id, name, seq, status, attempts, started_at, finished_at, error_code,"
            " error_reason, error_message, result) VALUES ('t1', 'flight.reserve', 1, 'SUCCEEDED', 2,"
            f" '{NOW}', '{NOW}', '', '', '', '{{\"price\": 4200}}')",
        ],
        "SELECT t.trip_id, t.state, s.name, s.status, s.attempts FROM trips t JOIN steps s ON s.trip_id = t.trip_id",
    ),
}
# A write the revision-2 CHECK refuses, per kind.
UNKNOWN_STATE = {
    "coordinator": "UPDATE trips SET state = 'LOST' WHERE trip_id = 't1'",
    **{name: "UPDATE reservations SET status = 'LIMBO'" for name in ("flight", "hotel", "payment", "notify", "car")},
}


@pytest.fixture
async def engine_of(databases: Databases) -> AsyncIterator[Any]:
    engines: list[AsyncEngine] = []

    def make(component: str) -> AsyncEngine:
        engine = make_engine(databases.empty_url(component))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.dispose()


async def rows(engine: AsyncEngine, query: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(row) for row in await conn.execute(text(query))]


@pytest.mark.parametrize("component", list(KINDS))
async def test_a_database_at_revision_1_upgrades_with_its_data(component: str, engine_of: Any) -> None:
    engine = engine_of(component)
    first = await migrate(engine, component, target=FIRST_REVISION)
    assert (first.before, first.after) == (None, FIRST_REVISION)
    inserts, query = ROWS[component]
    async with engine.begin() as conn:
        for statement in inserts:
            await conn.execute(text(statement))
    before = await rows(engine, query)
    assert before, "the representative rows were not written"

    upgraded = await migrate(engine, component)
    assert (upgraded.before, upgraded.after) == (FIRST_REVISION, head(component))
    assert head(component) != FIRST_REVISION
    assert await rows(engine, query) == before
    async with engine.connect() as conn:
        assert await conn.run_sync(schema_drift, component) == [], "the migrated schema differs from the models"
    with pytest.raises(IntegrityError):  # revision 2's CHECK is really there
        async with engine.begin() as conn:
            await conn.execute(text(UNKNOWN_STATE[component]))

    again = await migrate(engine, component)
    assert not again.changed
    assert await rows(engine, query) == before  # and the seed was not written twice


@pytest.mark.parametrize("component", ["flight", "coordinator"])
async def test_a_database_made_before_migrations_is_adopted(component: str, engine_of: Any) -> None:
    engine = engine_of(component)
    await migrate(engine, component, target=FIRST_REVISION)
    async with engine.begin() as conn:  # create_all's databases have no version table
        await conn.execute(text("DROP TABLE alembic_version"))
    adopted = await migrate(engine, component)
    assert adopted.adopted and adopted.after == head(component)


async def test_with_migrations_off_a_service_refuses_an_old_schema(databases: Databases) -> None:
    url = databases.empty_url("flight")
    engine = make_engine(url)
    try:
        await migrate(engine, "flight", target=FIRST_REVISION)
    finally:
        await engine.dispose()
    with pytest.raises(SchemaOutOfDateError, match="tripmesh migrate --component flight"):
        await start_participant(FLIGHT, database_url=url, sweep_seconds=None, migrate=False)
    running = await start_participant(FLIGHT, database_url=url, sweep_seconds=None)  # migrates
    await running.stop()
    running = await start_participant(FLIGHT, database_url=url, sweep_seconds=None, migrate=False)
    await running.stop()


def tripmesh_migrate(*args: str, var_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "TRIPMESH_VAR_DIR": str(var_dir)}
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "migrate", *args],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_tripmesh_migrate_twice_is_a_no_op_the_second_time(databases: Databases, tmp_path: Path) -> None:
    if databases.backend == "sqlite":
        first = tripmesh_migrate(var_dir=tmp_path / "var")
        second = tripmesh_migrate(var_dir=tmp_path / "var")
        components = list(KINDS)
    else:
        url = databases.empty_url("hotel")
        first = tripmesh_migrate("--component", "hotel", "--url", url, var_dir=tmp_path)
        second = tripmesh_migrate("--component", "hotel", "--url", url, var_dir=tmp_path)
        components = ["hotel"]
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    for component in components:
        assert f"empty -> {head(component)}" in first.stdout
        assert f"at {head(component)}, nothing to do" in second.stdout
    assert "->" not in second.stdout
