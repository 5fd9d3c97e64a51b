"""WatchTrip over real gRPC: a snapshot, each step event as it happens, the end at CONFIRMED/CANCELLED.

An in-process mesh (real servers, real SQLite files). The events of a watched trip are replayed on its
snapshot and must come to the trip GetTrip reads afterwards. A trip this process does not drive is
followed through the step log (TripWatcher against a real StepLogStore, fed by another writer).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from coordinator.engine import RetryPolicy
from coordinator.steplog import StepLogStore, new_trip, state_write, step_write
from coordinator.trip import FlightPart, Step, StepStatus, Trip, TripRequest, TripState
from coordinator.watch import Snapshot, StateUpdate, StepUpdate, TripWatcher
from coordinator.watch_hub import WatchHub
from services.kit.db import make_engine
from services.kit.errors import TripNotFoundError
from services.kit.migrate import migrate
from tests.contract.test_trip_coordinator import booking
from tests.support.mesh import Mesh, start_mesh
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

pytestmark = pytest.mark.contract


def faults(monkeypatch: pytest.MonkeyPatch, component: str, *rules: dict[str, object]) -> None:
    monkeypatch.setenv(f"TRIPMESH_{component.upper()}_FAULTS", json.dumps(list(rules)))


async def started(mesh: Mesh, request: trip_pb.BookTripRequest) -> asyncio.Task[trip_pb.BookTripResponse]:
    """BookTrip in the background, once the trip is durable (GetTrip finds it)."""

    async def book() -> trip_pb.BookTripResponse:
        response: trip_pb.BookTripResponse = await mesh.stub.BookTrip(request, timeout=30)
        return response

    task = asyncio.create_task(book())
    for _ in range(400):
        try:
            await mesh.stub.GetTrip(trip_pb.GetTripRequest(trip_id=request.trip_id))
            return task
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
        await asyncio.sleep(0.005)
    raise AssertionError("the trip never became readable")


def replay(messages: list[trip_pb.WatchTripResponse]) -> tuple[int, dict[str, trip_pb.TripStep]]:
    """The trip state and steps a client following the stream ends up with."""
    state, steps = common_pb.TRIP_STATE_UNSPECIFIED, {}
    for message in messages:
        kind = message.WhichOneof("event")
        if kind == "snapshot":
            state, steps = message.snapshot.state, {s.name: s for s in message.snapshot.steps}
        elif kind == "step":
            steps[message.step.step.name] = message.step.step
            state = message.step.trip_state
        else:
            assert message.state.previous_state == state, message
            state = message.state.state
    return state, steps


async def collect(call: AsyncIterator[trip_pb.WatchTripResponse]) -> list[trip_pb.WatchTripResponse]:
    return [message async for message in call]


@pytest.fixture
async def slow_mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Mesh]:
    # slow enough that the watch starts long before the trip ends; the hotel fails its first Reserve
    faults(
        monkeypatch,
        "hotel",
        {"method": "Reserve", "latency_ms": 150},
        {"method": "Reserve", "match": "retried", "outage": [0, 1.5]},
        {"method": "Cancel", "match": "stuck", "code": "UNAVAILABLE"},
    )
    policy = RetryPolicy(
        reserve_attempts=60, confirm_attempts=5, cancel_attempts=3, initial_backoff=0.05, max_backoff=0.1
    )
    mesh = await start_mesh(tmp_path, monkeypatch, policy=policy)
    try:
        yield mesh
        assert await mesh.invariants() == []
    finally:
        await mesh.stop()


async def test_a_watch_sends_the_snapshot_then_every_step_as_it_happens_and_ends_confirmed(slow_mesh: Mesh) -> None:
    request = booking("watch-retried-1")
    booked = await started(slow_mesh, request)
    messages = await collect(slow_mesh.stub.WatchTrip(trip_pb.WatchTripRequest(trip_id=request.trip_id), timeout=30))
    final = (await booked).trip

    assert messages[0].WhichOneof("event") == "snapshot"
    assert messages[0].snapshot.state == common_pb.TRIP_STATE_RESERVING
    state, steps = replay(messages)
    assert state == common_pb.TRIP_STATE_CONFIRMED == final.state
    assert steps == {s.name: s for s in final.steps}  # the events add up to what GetTrip says
    events = [m.step for m in messages if m.WhichOneof("event") == "step"]
    # each step is seen sent (STARTED) and answered, payment captured after flight and hotel confirmed
    for name in ("payment.reserve", "flight.confirm", "hotel.confirm", "payment.confirm", "notify.confirm"):
        mine = [e for e in events if e.step.name == name]
        assert [e.step.status for e in mine] == [trip_pb.STEP_STATUS_STARTED, trip_pb.STEP_STATUS_SUCCEEDED], name
        assert mine[1].outcome == "OK" and mine[1].step.HasField("end_time") and mine[1].step.duration.ToNanoseconds()
    order = [e.step.name for e in events if e.step.status == trip_pb.STEP_STATUS_SUCCEEDED]
    assert order.index("payment.confirm") > max(order.index("flight.confirm"), order.index("hotel.confirm"))
    # the hotel's first attempts failed and were resent: every attempt is an event
    hotel = [(e.step.attempts, e.step.status, e.outcome) for e in events if e.step.name == "hotel.reserve"]
    assert (1, trip_pb.STEP_STATUS_STARTED, "TRANSIENT") in hotel, hotel
    attempts = hotel[-1][0]
    assert attempts > 1 and hotel[-1] == (attempts, trip_pb.STEP_STATUS_SUCCEEDED, "OK"), hotel
    for attempt in range(2, attempts + 1):  # each resend is seen leaving, then answered
        assert hotel.index((attempt, trip_pb.STEP_STATUS_STARTED, "")) < len(hotel) - 1, hotel
    states = [(m.state.previous_state, m.state.state) for m in messages if m.WhichOneof("event") == "state"]
    assert states == [
        (common_pb.TRIP_STATE_RESERVING, common_pb.TRIP_STATE_CONFIRMING),
        (common_pb.TRIP_STATE_CONFIRMING, common_pb.TRIP_STATE_CONFIRMED),
    ]
    times = [m.step.event_time.ToDatetime() for m in messages if m.WhichOneof("event") == "step"]
    assert times == sorted(times)


async def test_a_finished_trip_is_one_snapshot_and_bad_ids_are_refused(slow_mesh: Mesh) -> None:
    request = booking("watch-declined-1", payment_method_id="pm_ada_declined")
    trip = (await slow_mesh.stub.BookTrip(request, timeout=30)).trip
    assert trip.state == common_pb.TRIP_STATE_CANCELLED
    messages = await collect(slow_mesh.stub.WatchTrip(trip_pb.WatchTripRequest(trip_id=request.trip_id), timeout=10))
    assert len(messages) == 1 and messages[0].snapshot == trip

    for trip_id, code in (("", grpc.StatusCode.INVALID_ARGUMENT), ("no such/id", grpc.StatusCode.INVALID_ARGUMENT),
                          ("never-booked", grpc.StatusCode.NOT_FOUND)):  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await collect(slow_mesh.stub.WatchTrip(trip_pb.WatchTripRequest(trip_id=trip_id), timeout=10))
        assert refused.value.code() == code, trip_id
        assert refused.value.details()


async def test_a_stuck_trip_keeps_the_stream_open_and_a_retry_is_followed_to_cancelled(
    slow_mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = booking("watch-stuck-1", payment_method_id="pm_ada_declined")
    booked = await started(slow_mesh, request)
    call = slow_mesh.stub.WatchTrip(trip_pb.WatchTripRequest(trip_id=request.trip_id), timeout=30)
    messages: list[trip_pb.WatchTripResponse] = []
    while not messages or messages[-1].state.state != common_pb.TRIP_STATE_NEEDS_ATTENTION:
        messages.append(await call.read())
    assert (await booked).trip.state == common_pb.TRIP_STATE_NEEDS_ATTENTION
    assert "hotel.cancel kept failing" in messages[-1].state.failure_reason
    # still open, and quiet: nothing more comes until something happens
    pending = asyncio.ensure_future(call.read())
    done, _ = await asyncio.wait([pending], timeout=0.6)
    assert not done and not call.done()

    monkeypatch.delenv("TRIPMESH_HOTEL_FAULTS")
    await slow_mesh.restart_participant("hotel")
    retried = (await slow_mesh.stub.RetryTrip(trip_pb.RetryTripRequest(trip_id=request.trip_id), timeout=30)).trip
    assert retried.state == common_pb.TRIP_STATE_CANCELLED
    while (message := await pending) is not grpc.aio.EOF:
        messages.append(message)
        pending = asyncio.ensure_future(call.read())
    state, steps = replay(messages)
    assert state == common_pb.TRIP_STATE_CANCELLED
    assert steps["hotel.cancel"].status == trip_pb.STEP_STATUS_SUCCEEDED
    assert steps == {s.name: s for s in retried.steps}
    states = [(m.state.previous_state, m.state.state) for m in messages if m.WhichOneof("event") == "state"]
    assert states[-2:] == [
        (common_pb.TRIP_STATE_NEEDS_ATTENTION, common_pb.TRIP_STATE_COMPENSATING),
        (common_pb.TRIP_STATE_COMPENSATING, common_pb.TRIP_STATE_CANCELLED),
    ]


# --- a trip driven elsewhere: followed through the step log -------------------------------------------


async def test_a_trip_driven_by_another_process_is_followed_through_the_step_log(tmp_path: Path) -> None:
    db = make_engine(f"sqlite+aiosqlite:///{tmp_path}/coordinator.db")
    await migrate(db, "coordinator")
    store = StepLogStore(db)
    t0 = datetime(2027, 3, 1, tzinfo=UTC)
    request = TripRequest("remote-1", "cust-ada", "ada@example.com", "", FlightPart("TM101-20270315", "", 1, 1),
                          None, "pm_ada_visa", "EUR")  # fmt: skip
    trip = Trip(request, TripState.RESERVING, t0, t0, t0 + timedelta(minutes=5), 1, fence=1)
    step = Step("flight.reserve", 1, StepStatus.STARTED, 1, t0)
    trip.steps[step.name] = step
    assert await store.flush([new_trip(trip), step_write(trip, step)])

    async def read(trip_id: str) -> Trip:
        found = await store.load(trip_id)
        if found is None:
            raise TripNotFoundError(trip_id)
        return found

    watcher = TripWatcher(WatchHub(), read, lambda _trip_id: None, poll_interval=0.02)  # driven by nobody here
    received: asyncio.Queue[object] = asyncio.Queue()

    async def follow() -> None:
        async for item in watcher.watch("remote-1"):
            await received.put(item)
        await received.put("end")

    follower = asyncio.create_task(follow())
    try:
        first = await asyncio.wait_for(received.get(), 2)
        assert isinstance(first, Snapshot) and first.trip.steps["flight.reserve"].status is StepStatus.STARTED

        # the other replica writes the outcome, then the trip moves on: both are seen, in that order
        step.status, step.finished_at = StepStatus.SUCCEEDED, t0 + timedelta(milliseconds=40)
        trip.state, trip.updated_at = TripState.CONFIRMING, t0 + timedelta(milliseconds=50)
        assert await store.flush([step_write(trip, step), state_write(trip)])
        update, moved = await asyncio.wait_for(received.get(), 2), await asyncio.wait_for(received.get(), 2)
        assert isinstance(update, StepUpdate) and update.step.status is StepStatus.SUCCEEDED
        assert update.step.finished_at == step.finished_at
        assert isinstance(moved, StateUpdate) and (moved.previous, moved.state) == (
            TripState.RESERVING,
            TripState.CONFIRMING,
        )
        # nothing changed: nothing is sent
        await asyncio.sleep(0.2)
        assert received.empty()
        trip.state = TripState.CONFIRMED
        assert await store.flush([state_write(trip)])
        last = await asyncio.wait_for(received.get(), 2)
        assert isinstance(last, StateUpdate) and last.state is TripState.CONFIRMED
        assert await asyncio.wait_for(received.get(), 2) == "end"  # finished: the stream ends
    finally:
        follower.cancel()
        await store.close()
        await db.dispose()
