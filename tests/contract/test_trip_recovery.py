"""The coordinator against misbehaving participants: faults injected by configuration, in-process mesh.

A compensation that fails past its budget and succeeds on an operator's retry; a participant that
answers past the call deadline; a lost reply (the effect happened, the answer did not arrive); a hold
that expires before its Confirm. Every test ends with the invariants read from every database.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from coordinator.engine import RetryPolicy
from tests.contract.test_trip_coordinator import booking
from tests.support.databases import Databases
from tests.support.mesh import Mesh, start_mesh
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

pytestmark = pytest.mark.contract


def faults(monkeypatch: pytest.MonkeyPatch, component: str, *rules: dict[str, object]) -> None:
    monkeypatch.setenv(f"TRIPMESH_{component.upper()}_FAULTS", json.dumps(list(rules)))


async def statuses(mesh: Mesh, participant: str, trip_id: str) -> str | None:
    async with mesh.participants[participant].engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT status FROM reservations WHERE reservation_id = :rid"), {"rid": f"{trip_id}/{participant}"}
            )
        ).first()
    return None if row is None else str(row.status)


@pytest.mark.postgresql
async def test_a_compensation_past_its_budget_waits_for_an_operator_then_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, databases: Databases
) -> None:
    # the hotel cannot cancel anything of trips marked "stuck" (think: its database is down)
    faults(monkeypatch, "hotel", {"method": "Cancel", "match": "stuck", "code": "UNAVAILABLE"})
    mesh = await start_mesh(tmp_path, monkeypatch, databases=databases)
    try:
        request = booking("stuck-1", payment_method_id="pm_ada_declined")
        trip = (await mesh.stub.BookTrip(request, timeout=30)).trip
        assert trip.state == common_pb.TRIP_STATE_NEEDS_ATTENTION
        assert "CARD_DECLINED" in trip.failure_reason
        assert "compensation failed: hotel.cancel kept failing (UNAVAILABLE" in trip.failure_reason
        steps = {s.name: s for s in trip.steps}
        assert steps["hotel.cancel"].status == trip_pb.STEP_STATUS_FAILED
        assert steps["hotel.cancel"].attempts == 5  # the cancel budget of the test policy
        assert steps["flight.cancel"].status == trip_pb.STEP_STATUS_SUCCEEDED
        assert await statuses(mesh, "hotel", "stuck-1") == "HELD"

        listed = await mesh.stub.ListTrips(trip_pb.ListTripsRequest(state=common_pb.TRIP_STATE_NEEDS_ATTENTION))
        assert [t.trip_id for t in listed.trips] == ["stuck-1"]

        # retrying a trip that does not need attention is refused
        ok = (await mesh.stub.BookTrip(booking("fine-1"), timeout=30)).trip
        assert ok.state == common_pb.TRIP_STATE_CONFIRMED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await mesh.stub.RetryTrip(trip_pb.RetryTripRequest(trip_id="fine-1"))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await mesh.stub.RetryTrip(trip_pb.RetryTripRequest(trip_id="never-booked"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

        # the hotel comes back (restarted without the fault); the operator retries
        monkeypatch.delenv("TRIPMESH_HOTEL_FAULTS")
        await mesh.restart_participant("hotel")
        retried = (await mesh.stub.RetryTrip(trip_pb.RetryTripRequest(trip_id="stuck-1"), timeout=30)).trip
        assert retried.state == common_pb.TRIP_STATE_CANCELLED
        steps = {s.name: s for s in retried.steps}
        assert steps["hotel.cancel"].status == trip_pb.STEP_STATUS_SUCCEEDED
        assert steps["hotel.cancel"].attempts == 6
        assert "CARD_DECLINED" in retried.failure_reason
        assert await statuses(mesh, "hotel", "stuck-1") == "CANCELLED"
        assert await mesh.invariants() == []
    finally:
        await mesh.stop()


async def test_a_participant_slower_than_the_deadline_is_treated_as_maybe_done_and_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, databases: Databases
) -> None:
    faults(monkeypatch, "hotel", {"method": "Reserve", "latency_ms": 400})
    mesh = await start_mesh(tmp_path, monkeypatch, call_timeout=0.15, databases=databases)
    try:
        trip = (await mesh.stub.BookTrip(booking("slow-1"), timeout=30)).trip
        assert trip.state == common_pb.TRIP_STATE_CANCELLED
        steps = {s.name: s for s in trip.steps}
        hotel = steps["hotel.reserve"]
        assert hotel.status == trip_pb.STEP_STATUS_FAILED and hotel.error_code == "DEADLINE_EXCEEDED"
        assert hotel.attempts == 3  # the reserve budget of the test policy, every attempt in the log
        # its outcome is unknown, so it is cancelled along with the flight
        assert steps["hotel.cancel"].status == trip_pb.STEP_STATUS_SUCCEEDED
        assert steps["flight.cancel"].status == trip_pb.STEP_STATUS_SUCCEEDED
        assert await statuses(mesh, "hotel", "slow-1") == "CANCELLED"
        assert await mesh.invariants() == []
    finally:
        await mesh.stop()


async def test_a_lost_reply_is_resent_and_takes_effect_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, databases: Databases
) -> None:
    # payment authorises, then the reply is lost (the first time: a marker on this trip only, rate 1 would
    # lose every reply, so the rule is limited to the first attempt by an outage window)
    faults(monkeypatch, "payment", {"method": "Reserve", "match": "lost-1", "when": "after", "outage": [0, 3]})
    mesh = await start_mesh(
        tmp_path,
        monkeypatch,
        databases=databases,
        policy=RetryPolicy(
            reserve_attempts=60, confirm_attempts=5, cancel_attempts=5, initial_backoff=0.05, max_backoff=0.1
        ),
    )
    try:
        trip = (await mesh.stub.BookTrip(booking("lost-1"), timeout=30)).trip
        assert trip.state == common_pb.TRIP_STATE_CONFIRMED, trip.failure_reason
        payment = next(s for s in trip.steps if s.name == "payment.reserve")
        assert payment.attempts > 1 and payment.error_code == "UNAVAILABLE"
        async with mesh.participants["payment"].engine.connect() as conn:
            kinds = [
                r.kind
                for r in await conn.execute(
                    text("SELECT kind FROM ledger WHERE reservation_id = 'lost-1/payment' ORDER BY entry_id")
                )
            ]
        assert kinds == ["AUTHORIZE", "CAPTURE"]  # I7: once each, however often the call was resent
        assert await mesh.invariants() == []
    finally:
        await mesh.stop()


@pytest.mark.postgresql
async def test_a_hold_that_expires_before_its_confirm_is_compensated_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, databases: Databases
) -> None:
    # holds last 1 s; the payment authorisation takes 1.5 s, so flight and hotel expire before Confirm
    faults(monkeypatch, "payment", {"method": "Reserve", "latency_ms": 1500})
    mesh = await start_mesh(tmp_path, monkeypatch, hold_seconds=1.0, databases=databases)
    try:
        trip = (await mesh.stub.BookTrip(booking("late-1"), timeout=30)).trip
        assert trip.state == common_pb.TRIP_STATE_CANCELLED
        assert "HOLD_EXPIRED" in trip.failure_reason
        names = [s.name for s in trip.steps]
        assert "payment.cancel" in names  # the authorisation is voided
        assert "payment.confirm" not in names  # and never captured
        # voided by payment.cancel, or, on a machine slow enough, its own 1 s hold ran out first: released either way
        assert await statuses(mesh, "payment", "late-1") in ("CANCELLED", "EXPIRED")
        assert await statuses(mesh, "flight", "late-1") == "EXPIRED"
        assert await mesh.invariants() == []
    finally:
        await mesh.stop()
