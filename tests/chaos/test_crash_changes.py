"""The coordinator killed at named points of a change and of a cancellation of a booked trip, then restarted.

As tests/chaos/test_crash_points.py does for bookings: real participant processes for the module; each
case books a trip on a clean coordinator, restarts it with `TRIPMESH_COORDINATOR_CRASH_AT=<point>:<name>`,
sends ChangeTrip (a longer stay: a new hotel reservation, the difference charged, the old stay released) or
CancelTrip, sees the process die of SIGKILL, restarts it clean on the same step log and waits for the trip
to end. Then the databases are read directly: the trip holds exactly its new stay (or nothing), each money
movement of the change happened once (I7 from the ledger), and I1-I8 hold over every database.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.chaos.test_crash_points import COORDINATOR_ENV
from tests.support.chaos import (
    ProcessMesh,
    coordinator_stub,
    crash_trip_id,
    ledger_counts,
    ledger_problems,
    reservation_rows,
    state_name,
    trip_request,
    wait_terminal,
)
from tests.support.invariants import check_invariants
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]


@dataclass(frozen=True)
class Case:
    point: str
    name: str
    cancel: bool = False

    @property
    def spec(self) -> str:
        return f"{self.point}:{self.name}"

    @property
    def trip_id(self) -> str:
        return crash_trip_id("cancel" if self.cancel else "change", self.point, self.name)


CASES = [
    Case("after_intent", "hotel.reserve@2"),  # the new stay may be held: resent, once
    Case("after_state", "CHANGE_CONFIRMING"),  # the change's commit decision, nothing confirmed yet
    Case("after_call", "payment.confirm@2"),  # the difference captured, the answer lost
    Case("after_intent", "hotel.cancel"),  # the old stay on its way out
    Case("after_state", "CONFIRMED"),
    Case("after_intent", "flight.cancel", cancel=True),
    Case("after_call", "payment.reserve@2", cancel=True),  # the refund set aside, the answer lost
    Case("after_outcome", "payment.confirm@2", cancel=True),
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessMesh]:
    work_dir: Path = tmp_path_factory.mktemp("crash-changes")
    with ProcessMesh(work_dir, env={"coordinator": COORDINATOR_ENV}) as running:
        running.start_participants()
        yield running


def longer_stay(trip_id: str, day: int) -> trip_pb.ChangeTripRequest:
    return trip_pb.ChangeTripRequest(
        trip_id=trip_id,
        change_id="longer",
        hotel=trip_pb.TripHotel(
            hotel_id="lis-alfama",
            room_type=1,  # type: ignore[arg-type]
            check_in=common_pb.Date(year=2027, month=4, day=day),
            check_out=common_pb.Date(year=2027, month=4, day=day + 5),
            room_count=1,
        ),
    )


def restart(mesh: ProcessMesh, env: dict[str, str] | None = None) -> str:
    previous = mesh.procs.get("coordinator")
    if previous is not None and previous.running():
        previous.stop()
    return mesh.start("coordinator", env or {}).address


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.spec)
async def test_a_crash_in_a_change_or_a_cancellation_is_recovered(mesh: ProcessMesh, case: Case) -> None:
    day = 1 + 3 * CASES.index(case)  # each case on its own nights
    request = trip_request(
        case.trip_id,
        outbound=f"TM101-202704{day:02d}",
        inbound=f"TM102-202704{day + 5:02d}",
        check_in=(2027, 4, day),
        check_out=(2027, 4, day + 3),
    )
    with coordinator_stub(restart(mesh)) as stub:
        booked = stub.BookTrip(request, timeout=20).trip
    assert booked.state == common_pb.TRIP_STATE_CONFIRMED, booked.failure_reason

    address = restart(mesh, {"TRIPMESH_COORDINATOR_CRASH_AT": case.spec})
    armed = mesh.procs["coordinator"]
    with coordinator_stub(address) as stub:
        try:
            if case.cancel:
                reply = stub.CancelTrip(trip_pb.CancelTripRequest(trip_id=case.trip_id), timeout=20).trip
            else:
                reply = stub.ChangeTrip(longer_stay(case.trip_id, day), timeout=20).trip
        except grpc.RpcError as error:
            assert error.code() is grpc.StatusCode.UNAVAILABLE, error  # type: ignore[attr-defined]
        else:
            raise AssertionError(f"answered {state_name(reply.state)} although {case.spec} should have killed it")
    assert armed.wait_exit(15.0) == -signal.SIGKILL, armed.describe()

    with coordinator_stub(restart(mesh)) as stub:
        trip = wait_terminal(stub, case.trip_id, timeout=30.0)
    mesh.procs["coordinator"].stop()

    assert len(trip.changes) == 1, trip.changes  # accepted before the crash: never lost, never doubled
    (change,) = trip.changes
    assert all(s.attempts <= 2 for s in trip.steps), [(s.name, s.attempts) for s in trip.steps]
    async with mesh.databases() as (_coordinator, participants):
        hotel = await reservation_rows(participants["hotel"])
        flight = await reservation_rows(participants["flight"])
        ledger = await ledger_counts(participants["payment"])
    tid = case.trip_id
    if case.cancel:
        assert trip.state == common_pb.TRIP_STATE_CANCELLED, trip.failure_reason
        assert change.outcome == trip_pb.TRIP_CHANGE_OUTCOME_CANCELLED and trip.paid.minor_units == 0
        assert (hotel[f"{tid}/hotel"], flight[f"{tid}/flight"]) == ("CANCELLED", "CANCELLED")
        refund = {k: v for k, v in ledger[f"{tid}/payment.2"].items() if v}
        assert all(count == 1 for count in refund.values()), refund
    else:
        assert trip.state == common_pb.TRIP_STATE_CONFIRMED, trip.failure_reason
        assert change.outcome == trip_pb.TRIP_CHANGE_OUTCOME_APPLIED, change.reason
        assert (hotel[f"{tid}/hotel"], hotel[f"{tid}/hotel.2"]) == ("CANCELLED", "CONFIRMED")
        assert dict(ledger[f"{tid}/payment.2"]) == {"AUTHORIZE": 1, "CAPTURE": 1}
        assert trip.paid == trip.total


async def test_every_database_holds_the_invariants_after_the_crashed_changes(mesh: ProcessMesh) -> None:
    async with mesh.databases() as (coordinator, participants):
        problems = await check_invariants(coordinator, participants)
        problems += ledger_problems(await ledger_counts(participants["payment"]))
    assert problems == []
