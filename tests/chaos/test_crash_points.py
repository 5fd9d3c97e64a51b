"""The coordinator killed at every named point of the saga, then restarted: every trip still ends right.

The participants and the SMTP sink run as real processes for the whole module. Each case starts the
coordinator with `TRIPMESH_COORDINATOR_CRASH_AT=<point>:<name>`, books one trip (the call is cut when
the process SIGKILLs itself), checks that it really died of SIGKILL, restarts it without the crash
point on the same step log, and polls GetTrip until the trip is terminal (a trip that was not durable
yet when it died must have sent nothing; the client books it again). Then every participant's
database is read directly: each reservation of the trip in the right state, each effect exactly once
(I7: one AUTHORIZE and one CAPTURE ledger row, one queued e-mail, one delivered), and a call re-sent
only when the crash left its outcome unknown, and then once. The last test checks I1-I7 over all the
databases at once.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.support.chaos import (
    PARTICIPANTS,
    ProcessMesh,
    coordinator_stub,
    crash_trip_id,
    get_trip,
    ledger_counts,
    ledger_problems,
    mails_by_trip,
    outbox_counts,
    reservation_rows,
    state_name,
    trip_request,
    wait_terminal,
    wait_until,
)
from tests.support.invariants import check_invariants
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

COORDINATOR_ENV = {
    "TRIPMESH_COORDINATOR_CALL_TIMEOUT_SECONDS": "5",
    "TRIPMESH_COORDINATOR_TRIP_TIMEOUT_SECONDS": "120",
    "TRIPMESH_COORDINATOR_BOOK_WAIT_SECONDS": "20",
    "TRIPMESH_COORDINATOR_RESERVE_ATTEMPTS": "3",
    "TRIPMESH_COORDINATOR_CONFIRM_ATTEMPTS": "10",
    "TRIPMESH_COORDINATOR_CANCEL_ATTEMPTS": "10",
    "TRIPMESH_COORDINATOR_INITIAL_BACKOFF_SECONDS": "0.01",
    "TRIPMESH_COORDINATOR_MAX_BACKOFF_SECONDS": "0.1",
    "TRIPMESH_COORDINATOR_GRACE_SECONDS": "1",
}
# A BookTrip that could not make the trip durable in time books nothing and says so.
NOT_ANSWERED = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
STEP_POINTS = ("before_intent", "after_intent", "after_call", "after_outcome")
CONFIRMING_STEPS = ("flight.reserve", "payment.reserve", "flight.confirm", "payment.confirm", "notify.confirm")
# How many times the named step was sent in all, once the restarted coordinator has finished the trip.
# Before its intent is durable the call has not left: it is sent once, after the restart. With its
# intent durable and its outcome not, the outcome is unknown: it is sent again, once. An outcome is
# durable at once or with the trip's next flush (group commit, coordinator/crashpoints.py), so after
# `after_outcome` the call is sent again only if that flush had not happened yet. No step of any case
# is sent more than twice: one crash costs at most one resend.
ATTEMPTS_AFTER = {"before_intent": {1}, "after_intent": {2}, "after_call": {2}, "after_outcome": {1, 2}}


@dataclass(frozen=True)
class Case:
    point: str
    name: str
    declined: bool = False

    @property
    def spec(self) -> str:
        return f"{self.point}:{self.name}"

    @property
    def trip_id(self) -> str:
        return crash_trip_id("declined" if self.declined else "ok", self.point, self.name)

    @property
    def expected(self) -> int:
        return common_pb.TRIP_STATE_CANCELLED if self.declined else common_pb.TRIP_STATE_CONFIRMED


CASES = [
    *(Case(point, step) for step in CONFIRMING_STEPS for point in STEP_POINTS),
    Case("after_state", "CONFIRMING"),  # the commit decision taken, no Confirm sent yet
    Case("after_state", "CONFIRMED"),
    Case("after_intent", "notify.cancel", declined=True),
    Case("after_call", "flight.cancel", declined=True),
    Case("after_outcome", "hotel.cancel", declined=True),
    Case("after_state", "COMPENSATING", declined=True),
]


def request_for(case: Case, index: int) -> trip_pb.BookTripRequest:
    # One trip per case, each on its own dates so no two cases share a flight or a room-night counter.
    day = 1 + index % 25
    customer = ("cust-ada", "pm_ada_declined") if case.declined else ("cust-load", "pm_load_visa")
    return trip_request(
        case.trip_id,
        customer_id=customer[0],
        payment_method_id=customer[1],
        outbound=f"TM101-202704{day:02d}",
        inbound=f"TM102-202704{day + 3:02d}",
        check_in=(2027, 4, day),
        check_out=(2027, 4, day + 3),
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessMesh]:
    work_dir: Path = tmp_path_factory.mktemp("crash-points")
    with ProcessMesh(work_dir, env={"coordinator": COORDINATOR_ENV}) as running:
        running.start_participants()
        yield running


async def crash_then_recover(mesh: ProcessMesh, case: Case, request: trip_pb.BookTripRequest) -> trip_pb.Trip:
    """Book with the crash point armed, see the coordinator die of SIGKILL, restart it clean, await the end."""
    previous = mesh.procs.get("coordinator")
    if previous is not None and previous.running():
        previous.stop()
    armed = mesh.start("coordinator", {"TRIPMESH_COORDINATOR_CRASH_AT": case.spec})
    with coordinator_stub(armed.address) as stub:
        try:
            reply = stub.BookTrip(request, timeout=20)
        except grpc.RpcError as error:
            # the process died under the call: the connection is gone, the answer unknown to the client
            assert error.code() is grpc.StatusCode.UNAVAILABLE, f"{error.code()}: {error.details()}"  # type: ignore[attr-defined]
        else:
            raise AssertionError(
                f"BookTrip answered {state_name(reply.trip.state)} although {case.spec} should have "
                f"killed the coordinator first: {armed.describe()}"
            )
    code = armed.wait_exit(15.0)
    assert code is not None, f"{case.spec} was never reached: the coordinator is still running"
    assert code == -signal.SIGKILL, armed.describe()

    recovered = mesh.start("coordinator")
    with coordinator_stub(recovered.address) as stub:
        try:
            get_trip(stub, case.trip_id)
        except grpc.RpcError as error:
            # Not durable when it died (a new trip is written with its first intents), so nothing was
            # sent and nothing acknowledged: the client, which got no answer, books again.
            assert error.code() is grpc.StatusCode.NOT_FOUND, error  # type: ignore[attr-defined]
            assert case.point == "before_intent", f"{case.trip_id} was lost after {case.spec}"
            assert await reservations_of(mesh, case.trip_id) == {}, "a call left before its intent"
            stub.BookTrip(request, timeout=20)
        trip = wait_terminal(stub, case.trip_id, timeout=30.0)
    recovered.stop()
    return trip


async def reservations_of(mesh: ProcessMesh, trip_id: str) -> dict[str, str]:
    """participant -> status of the trip's reservation there, for the participants that have one."""
    async with mesh.databases() as (_coordinator, participants):
        found = {
            name: (await reservation_rows(engine)).get(f"{trip_id}/{name}") for name, engine in participants.items()
        }
    return {name: status for name, status in found.items() if status is not None}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.spec}{'-declined' if c.declined else ''}")
async def test_a_crash_at_a_named_point_is_recovered(mesh: ProcessMesh, case: Case) -> None:
    request = request_for(case, CASES.index(case))
    trip = await crash_then_recover(mesh, case, request)

    steps = {s.name: s for s in trip.steps}
    assert trip.state == case.expected, f"{state_name(trip.state)}: {trip.failure_reason}; steps {list(steps)}"
    if case.point in ATTEMPTS_AFTER:
        assert steps[case.name].attempts in ATTEMPTS_AFTER[case.point], steps[case.name]
    assert all(s.attempts <= 2 for s in trip.steps), [(s.name, s.attempts) for s in trip.steps]

    async with mesh.databases() as (_coordinator, participants):
        rows = {name: await reservation_rows(engine) for name, engine in participants.items()}
        ledger = (await ledger_counts(participants["payment"])).get(f"{case.trip_id}/payment", {})
        queued = (await outbox_counts(participants["notify"]))[f"{case.trip_id}/notify"]
    status = {name: rows[name].get(f"{case.trip_id}/{name}") for name in PARTICIPANTS}

    if case.declined:
        assert "CARD_DECLINED" in trip.failure_reason, trip.failure_reason
        assert status == {"flight": "CANCELLED", "hotel": "CANCELLED", "payment": None, "notify": "CANCELLED"}
        assert dict(ledger) == {} and queued == 0
        assert all(s.status == trip_pb.STEP_STATUS_SUCCEEDED for s in trip.steps if s.name.endswith(".cancel"))
        return

    assert status == dict.fromkeys(PARTICIPANTS, "CONFIRMED"), status
    assert all(s.status == trip_pb.STEP_STATUS_SUCCEEDED for s in trip.steps), list(steps.items())
    # I7: the money moved once each way, the e-mail was queued once and delivered once
    assert dict(ledger) == {"AUTHORIZE": 1, "CAPTURE": 1}, ledger
    assert queued == 1
    wait_until(lambda: mails_by_trip(mesh.mail_dir)[case.trip_id] >= 1, 10.0, f"the e-mail of {case.trip_id}")
    assert mails_by_trip(mesh.mail_dir)[case.trip_id] == 1


async def test_a_trip_acknowledged_while_the_step_log_is_slow_survives_a_crash(mesh: ProcessMesh) -> None:
    """A slow step log (another writer holds SQLite's write lock) must not make BookTrip acknowledge a trip
    that a crash can lose: either the call fails (nothing acknowledged) or the trip survives the crash."""
    trip_id = "crash-acknowledged-while-the-step-log-is-slow"
    previous = mesh.procs.get("coordinator")
    if previous is not None and previous.running():
        previous.stop()
    coordinator = mesh.start("coordinator")
    lock = sqlite3.connect(mesh.db_path("coordinator"), timeout=5.0)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the coordinator's next write waits for this one (busy_timeout)
        with coordinator_stub(coordinator.address) as stub:
            try:
                reply = stub.BookTrip(
                    trip_request(trip_id, outbound="TM101-20270420", inbound="TM102-20270424"), timeout=1.0
                )
            except grpc.RpcError as error:
                assert error.code() in NOT_ANSWERED, error  # type: ignore[attr-defined]
                acknowledged = None
            else:
                acknowledged = state_name(reply.trip.state)
    finally:
        assert coordinator.kill() == -signal.SIGKILL
        lock.rollback()
        lock.close()
    if acknowledged is None:
        return  # nothing was acknowledged: nothing may be lost
    recovered = mesh.start("coordinator")
    try:
        with coordinator_stub(recovered.address) as stub:
            try:
                trip = get_trip(stub, trip_id)
            except grpc.RpcError as error:
                raise AssertionError(
                    f"BookTrip answered {acknowledged} for {trip_id}, and after a SIGKILL the trip is gone: "
                    f"{error.code().name}"  # type: ignore[attr-defined]
                ) from None
            assert wait_terminal(stub, trip.trip_id, 30.0).state == common_pb.TRIP_STATE_CONFIRMED
    finally:
        recovered.stop()


async def test_every_database_holds_the_invariants_after_all_the_crashes(mesh: ProcessMesh) -> None:
    async with mesh.databases() as (coordinator, participants):
        problems = await check_invariants(coordinator, participants)
        problems += ledger_problems(await ledger_counts(participants["payment"]))
    assert problems == []
    # no e-mail for a cancelled trip, and none twice
    mails = mails_by_trip(mesh.mail_dir)
    assert not [c.trip_id for c in CASES if c.declined and mails[c.trip_id]], mails
    assert all(count == 1 for count in mails.values()), mails
