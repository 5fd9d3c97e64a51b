"""The coordinator's contract over real gRPC: BookTrip idempotency, outcomes, history, every error code.

The whole mesh runs in-process (real servers on port 0, a SQLite file each); after each test the
invariants are checked by reading every database directly.
"""

from __future__ import annotations

import asyncio
import email
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from tests.support.databases import Databases
from tests.support.mesh import Mesh, audited_mesh, start_mesh
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

pytestmark = pytest.mark.contract


@pytest.fixture
async def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, databases: Databases) -> AsyncIterator[Mesh]:
    async with audited_mesh(tmp_path, monkeypatch, databases=databases) as running:
        yield running


def booking(trip_id: str | None = None, **changes: object) -> trip_pb.BookTripRequest:
    request = trip_pb.BookTripRequest(
        trip_id=f"t-{uuid.uuid4().hex[:12]}" if trip_id is None else trip_id,
        customer=trip_pb.Customer(customer_id="cust-ada", email="ada@example.com", name="Ada Lovelace"),
        flight=trip_pb.TripFlight(
            outbound_flight_id="TM101-20270315",
            return_flight_id="TM102-20270322",
            cabin=flight_pb.CABIN_ECONOMY,
            passenger_count=2,
        ),
        hotel=trip_pb.TripHotel(
            hotel_id="lis-alfama",
            room_type=hotel_pb.ROOM_TYPE_STANDARD,
            check_in=common_pb.Date(year=2027, month=3, day=15),
            check_out=common_pb.Date(year=2027, month=3, day=22),
            room_count=1,
        ),
        payment_method_id="pm_ada_visa",
        currency_code="EUR",
    )
    for path, value in changes.items():
        target: object = request
        *parents, leaf = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        if value is None:
            target.ClearField(leaf)  # type: ignore[attr-defined]
        elif hasattr(value, "CopyFrom"):
            getattr(target, leaf).CopyFrom(value)
        else:
            setattr(target, leaf, value)
    return request


def step_names(trip: trip_pb.Trip) -> list[str]:
    return [s.name for s in trip.steps]


async def wait_for_mail(directory: Path, trip_id: str, seconds: float = 10.0) -> email.message.Message:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        for path in directory.glob("*.eml"):
            message = email.message_from_bytes(path.read_bytes())
            if trip_id in str(message["Subject"]):
                return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"no e-mail for {trip_id} in {directory}")


@pytest.mark.postgresql
async def test_a_trip_is_confirmed_with_every_step_and_the_email_is_sent(mesh: Mesh) -> None:
    request = booking()
    response = await mesh.stub.BookTrip(request, timeout=30)
    trip = response.trip
    assert trip.state == common_pb.TRIP_STATE_CONFIRMED, trip.failure_reason
    prices = {r.participant: r.price.minor_units for r in trip.reservations}
    assert set(prices) == {"flight", "hotel", "payment", "notify"}
    assert trip.total.minor_units == prices["flight"] + prices["hotel"] > 0
    assert prices["payment"] == trip.total.minor_units
    assert all(r.status == common_pb.RESERVATION_STATUS_CONFIRMED for r in trip.reservations)
    names = step_names(trip)
    assert set(names[:2]) == {"flight.reserve", "hotel.reserve"}
    assert set(names[2:4]) == {"payment.reserve", "notify.reserve"}
    assert set(names[4:6]) == {"flight.confirm", "hotel.confirm"}
    assert names[6:] == ["payment.confirm", "notify.confirm"]
    for step in trip.steps:
        assert step.status == trip_pb.STEP_STATUS_SUCCEEDED and step.attempts == 1
        assert step.end_time.ToDatetime() >= step.start_time.ToDatetime()
    # the customer is charged only after flight and hotel are confirmed
    confirm_times = {s.name: s for s in trip.steps}
    assert confirm_times["payment.confirm"].start_time.ToDatetime() >= max(
        confirm_times["flight.confirm"].end_time.ToDatetime(), confirm_times["hotel.confirm"].end_time.ToDatetime()
    )
    mail = await wait_for_mail(mesh.mail_dir, request.trip_id)
    assert mail["To"] == "ada@example.com"
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes) and b"TM101-20270315" in body

    got = (await mesh.stub.GetTrip(trip_pb.GetTripRequest(trip_id=request.trip_id))).trip
    assert got.state == trip.state and step_names(got) == names and got.total == trip.total
    assert got.request == request


async def test_book_trip_is_idempotent_on_the_trip_id(mesh: Mesh) -> None:
    request = booking()
    first = (await mesh.stub.BookTrip(request, timeout=30)).trip
    second = (await mesh.stub.BookTrip(request, timeout=30)).trip
    assert second.create_time == first.create_time and second.state == first.state
    assert step_names(second) == step_names(first)
    async with mesh.participants["flight"].engine.connect() as conn:
        rows = (await conn.execute(text("SELECT COUNT(*) FROM reservations"))).scalar_one()
    assert rows == 1

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mesh.stub.BookTrip(booking(request.trip_id, flight__passenger_count=3), timeout=30)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert request.trip_id in (refused.value.details() or "")


@pytest.mark.postgresql
async def test_concurrent_duplicate_bookings_make_one_trip(mesh: Mesh) -> None:
    request = booking()
    results = await asyncio.gather(*(mesh.stub.BookTrip(request, timeout=30) for _ in range(5)))
    assert {r.trip.create_time.ToNanoseconds() for r in results} == {results[0].trip.create_time.ToNanoseconds()}
    final = (await mesh.stub.GetTrip(trip_pb.GetTripRequest(trip_id=request.trip_id))).trip
    assert final.state == common_pb.TRIP_STATE_CONFIRMED
    assert all(s.attempts == 1 for s in final.steps)


@pytest.mark.postgresql
async def test_a_sold_out_flight_cancels_the_hotel_and_charges_nothing(mesh: Mesh) -> None:
    request = booking(
        flight__outbound_flight_id="TM401-20270316",
        flight__return_flight_id="",
        flight__cabin=flight_pb.CABIN_BUSINESS,
        flight__passenger_count=9,
    )
    trip = (await mesh.stub.BookTrip(request, timeout=30)).trip
    assert trip.state == common_pb.TRIP_STATE_CANCELLED
    assert "flight.reserve was refused" in trip.failure_reason and "SOLD_OUT" in trip.failure_reason
    steps = {s.name: s for s in trip.steps}
    assert steps["flight.reserve"].status == trip_pb.STEP_STATUS_REFUSED
    assert steps["flight.reserve"].error_code == "RESOURCE_EXHAUSTED"
    assert steps["flight.reserve"].error_reason == "SOLD_OUT"
    assert steps["hotel.cancel"].status == trip_pb.STEP_STATUS_SUCCEEDED
    assert "payment.reserve" not in steps and "flight.cancel" not in steps
    assert [r.status for r in trip.reservations] == [common_pb.RESERVATION_STATUS_CANCELLED]


@pytest.mark.postgresql
@pytest.mark.parametrize(
    ("payment_method_id", "customer_id", "reason"),
    [("pm_ada_declined", "cust-ada", "CARD_DECLINED"), ("pm_bob_mc", "cust-bob", "INSUFFICIENT_FUNDS")],
)
async def test_a_refused_payment_compensates_in_reverse_order(
    mesh: Mesh, payment_method_id: str, customer_id: str, reason: str
) -> None:
    request = booking(payment_method_id=payment_method_id, customer__customer_id=customer_id)
    trip = (await mesh.stub.BookTrip(request, timeout=30)).trip
    assert trip.state == common_pb.TRIP_STATE_CANCELLED
    assert reason in trip.failure_reason
    names = step_names(trip)
    # the later group (notify) is undone before the earlier one (flight, hotel)
    assert names.index("notify.cancel") < min(names.index("flight.cancel"), names.index("hotel.cancel"))
    assert "payment.cancel" not in names  # a refused authorisation held nothing
    assert {r.participant: r.status for r in trip.reservations} == {
        "flight": common_pb.RESERVATION_STATUS_CANCELLED,
        "hotel": common_pb.RESERVATION_STATUS_CANCELLED,
        "notify": common_pb.RESERVATION_STATUS_CANCELLED,
    }
    assert not list(mesh.mail_dir.glob("*.eml"))


async def test_a_flight_only_trip(mesh: Mesh) -> None:
    trip = (await mesh.stub.BookTrip(booking(hotel=None), timeout=30)).trip
    assert trip.state == common_pb.TRIP_STATE_CONFIRMED
    assert not any(name.startswith("hotel.") for name in step_names(trip))


BAD_INPUTS: list[tuple[str, Callable[[], trip_pb.BookTripRequest], str]] = [
    ("empty trip id", lambda: booking(trip_id=""), "trip_id"),
    ("malformed trip id", lambda: booking(trip_id="has spaces/and slashes"), "trip_id"),
    ("no flight", lambda: booking(flight=None), "flight"),
    ("malformed flight id", lambda: booking(flight__outbound_flight_id="TM101"), "flight.outbound_flight_id"),
    ("return before departure", lambda: booking(flight__return_flight_id="TM102-20270310"), "flight.return_flight_id"),
    ("zero passengers", lambda: booking(flight__passenger_count=0), "flight.passenger_count"),
    ("a thousand passengers", lambda: booking(flight__passenger_count=1000), "flight.passenger_count"),
    ("no cabin", lambda: booking(flight__cabin=flight_pb.CABIN_UNSPECIFIED), "flight.cabin"),
    ("malformed email", lambda: booking(customer__email="ada-at-example"), "customer.email"),
    (
        "check-out before check-in",
        lambda: booking(hotel__check_out=common_pb.Date(year=2027, month=3, day=14)),
        "hotel.check_out",
    ),
    ("no room type", lambda: booking(hotel__room_type=hotel_pb.ROOM_TYPE_UNSPECIFIED), "hotel.room_type"),
    ("currency we do not take", lambda: booking(currency_code="JPY"), "currency_code"),
    ("no payment method", lambda: booking(payment_method_id=""), "payment_method_id"),
    ("no customer", lambda: booking(customer__customer_id=""), "customer.customer_id"),
]


@pytest.mark.parametrize(("label", "build", "field"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
async def test_bad_input_is_refused_and_writes_nothing(
    mesh: Mesh, label: str, build: Callable[[], trip_pb.BookTripRequest], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mesh.stub.BookTrip(build(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (refused.value.details() or "")
    async with mesh.coordinator.db.connect() as conn:
        assert (await conn.execute(text("SELECT COUNT(*) FROM trips"))).scalar_one() == 0
    for engine in mesh.engines.values():
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT COUNT(*) FROM reservations"))).scalar_one() == 0


async def test_get_trip_errors(mesh: Mesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await mesh.stub.GetTrip(trip_pb.GetTripRequest(trip_id="never-booked"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await mesh.stub.GetTrip(trip_pb.GetTripRequest(trip_id=""))
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.postgresql
async def test_list_trips_filters_by_state_and_pages(mesh: Mesh) -> None:
    confirmed = [booking() for _ in range(3)]
    declined = booking(payment_method_id="pm_ada_declined")
    for request in [*confirmed, declined]:
        await mesh.stub.BookTrip(request, timeout=30)
    only_cancelled = await mesh.stub.ListTrips(trip_pb.ListTripsRequest(state=common_pb.TRIP_STATE_CANCELLED))
    assert [t.trip_id for t in only_cancelled.trips] == [declined.trip_id]
    seen: list[str] = []
    token = ""
    while True:
        page = await mesh.stub.ListTrips(trip_pb.ListTripsRequest(page_size=2, page_token=token))
        assert len(page.trips) <= 2
        seen += [t.trip_id for t in page.trips]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(r.trip_id for r in [*confirmed, declined])
    assert seen[0] == declined.trip_id  # newest first
    for bad in (trip_pb.ListTripsRequest(page_size=501), trip_pb.ListTripsRequest(page_token="garbage")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await mesh.stub.ListTrips(bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_with_the_step_log_off_a_trip_is_still_booked_and_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STEP_LOG=off is the benchmark's no-durability limit (b): it must book real trips, or every ratio
    to it is meaningless. Nothing is written to the step log."""
    running = await start_mesh(tmp_path, monkeypatch, step_log="off")
    try:
        stub = running.stub
        trip = (await stub.BookTrip(booking(), timeout=30)).trip
        assert trip.state == common_pb.TRIP_STATE_CONFIRMED, trip
        refused = (await stub.BookTrip(booking(payment_method_id="pm_ada_declined"), timeout=30)).trip
        assert refused.state == common_pb.TRIP_STATE_CANCELLED, refused
        async with running.coordinator.db.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM trips"))).scalar() == 0
    finally:
        await running.stop()
