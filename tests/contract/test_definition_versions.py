"""Saga definition versions on the in-process mesh: a trip is driven by the definition it started under.

Two trips are written straight into the step log as a coordinator that died left them (RESERVING,
lease expired, nothing sent yet): one under trip/1 (the shape before cars), one under a version this
build has never heard of. A takeover scan drives the first to the end by trip/1; the second is not
leased, not driven, logged as `definition_unknown`, shown as such by GetTrip/ListTrips, refused by
RetryTrip naming its version, and still reported by the audit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from sqlalchemy import insert, select
from structlog.testing import capture_logs

from coordinator.models import steps, trip_leases, trips
from coordinator.parse import parse_book_trip
from tests.contract.test_trip_coordinator import booking
from tests.support.mesh import Mesh, start_mesh
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

pytestmark = pytest.mark.contract

GONE = "gone-replica:1"
UNKNOWN_VERSION = 99


@pytest.fixture
async def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Mesh]:
    running = await start_mesh(tmp_path, monkeypatch)
    try:
        yield running
    finally:
        await running.stop()


async def left_behind(mesh: Mesh, trip_id: str, version: int) -> trip_pb.BookTripRequest:
    """A trip as a dead coordinator left it: accepted under `version`, its lease long expired."""
    request = booking(trip_id)
    parsed = parse_book_trip(request)
    now = datetime.now(UTC)
    async with mesh.coordinator.db.begin() as conn:
        await conn.execute(
            insert(trips).values(
                trip_id=trip_id,
                state="RESERVING",
                fingerprint=parsed.fingerprint(),
                request=parsed.to_json(),
                customer_id=parsed.customer_id,
                definition_version=version,
                failure_reason="",
                created_at=now,
                updated_at=now,
                deadline_at=now + timedelta(minutes=5),
                owner=GONE,
                fence=1,
                lease_expires_at=now - timedelta(minutes=1),
            )
        )
        await conn.execute(
            insert(trip_leases).values(trip_id=trip_id, fence=1, owner=GONE, acquired_at=now, reason="new")
        )
    return request


async def get(mesh: Mesh, trip_id: str) -> trip_pb.Trip:
    return (await mesh.stub.GetTrip(trip_pb.GetTripRequest(trip_id=trip_id))).trip


async def test_an_old_definition_is_driven_by_it_and_an_unknown_one_is_left_alone(mesh: Mesh) -> None:
    await left_behind(mesh, "old-shape-1", 1)
    future = await left_behind(mesh, "from-the-future-1", UNKNOWN_VERSION)

    with capture_logs() as logs:
        taken = await mesh.coordinator.leases.takeover_once()
    assert taken == 1  # only the trip/1 trip was leased
    unknown = [e for e in logs if e["event"] == "definition_unknown"]
    assert [(e["definition_version"], e["trip_ids"]) for e in unknown] == [(UNKNOWN_VERSION, ["from-the-future-1"])]
    assert "trip/99" in unknown[0]["detail"] and "trip/1, trip/2" in unknown[0]["detail"]

    # trip/1 is driven to the end by trip/1
    deadline = asyncio.get_running_loop().time() + 20
    while (old := await get(mesh, "old-shape-1")).state != common_pb.TRIP_STATE_CONFIRMED:
        assert asyncio.get_running_loop().time() < deadline, old
        await asyncio.sleep(0.05)
    assert (old.definition_version, old.definition_known) == ("trip/1", True)
    assert {s.name for s in old.steps} >= {"flight.reserve", "hotel.reserve", "payment.confirm"}

    # the unknown one: shown as such, not leased, not one step written, not driven by a repeat
    shown = await get(mesh, "from-the-future-1")
    assert (shown.state, shown.definition_version, shown.definition_known) == (
        common_pb.TRIP_STATE_RESERVING,
        "trip/99",
        False,
    )
    listed = await mesh.stub.ListTrips(trip_pb.ListTripsRequest(state=common_pb.TRIP_STATE_RESERVING))
    assert [(t.trip_id, t.definition_known) for t in listed.trips] == [("from-the-future-1", False)]
    repeat = (await mesh.stub.BookTrip(future, timeout=10)).trip
    assert repeat.state == common_pb.TRIP_STATE_RESERVING and not repeat.steps
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mesh.stub.RetryTrip(trip_pb.RetryTripRequest(trip_id="from-the-future-1"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "trip/99" in (refused.value.details() or "")
    async with mesh.coordinator.db.connect() as conn:
        row = (await conn.execute(select(trips).where(trips.c.trip_id == "from-the-future-1"))).one()
        written = (await conn.execute(select(steps).where(steps.c.trip_id == "from-the-future-1"))).all()
    assert (row.owner, row.fence, row.state) == (GONE, 1, "RESERVING") and written == []
    for participant in mesh.participants.values():
        async with participant.engine.connect() as conn:
            rows = await conn.execute(select(participant.store.table.c.reservation_id))
            assert not [r for (r,) in rows if r.startswith("from-the-future-1/")]

    # a later scan does not log it again; the audit still reports it, naming the version
    with capture_logs() as later:
        await mesh.coordinator.leases.takeover_once()
    assert not [e for e in later if e["event"] == "definition_unknown"]
    assert await mesh.invariants() == [
        "I1: trip from-the-future-1 is still RESERVING under saga definition trip/99, which this build cannot drive"
    ]
