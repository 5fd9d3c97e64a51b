"""A trip with a rental car, over real gRPC on the in-process mesh: the car is reserved in parallel with
the flight and the hotel, priced into the total, confirmed before the payment is captured and released
like the others when the trip is undone; bad car parts are refused before anything is written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from tests.contract.test_trip_coordinator import booking, step_names, wait_for_mail
from tests.support.mesh import Mesh, start_mesh
from tripmesh.v1 import car_service_pb2 as car_pb
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

pytestmark = pytest.mark.contract

SUV_DAILY = 8900


@pytest.fixture
async def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Mesh]:
    running = await start_mesh(tmp_path, monkeypatch)
    try:
        yield running
        assert await running.invariants() == []
    finally:
        await running.stop()


def car(
    city: str = "Lisbon", car_class: int = car_pb.CAR_CLASS_SUV, days: tuple[int, int] = (15, 22)
) -> trip_pb.TripCar:
    return trip_pb.TripCar(
        city=city,
        car_class=car_class,  # type: ignore[arg-type]
        pick_up_date=common_pb.Date(year=2027, month=3, day=days[0]),
        drop_off_date=common_pb.Date(year=2027, month=3, day=days[1]),
    )


async def test_a_trip_with_a_car_is_confirmed_and_the_car_is_in_the_total(mesh: Mesh) -> None:
    request = booking(car=car())
    trip = (await mesh.stub.BookTrip(request, timeout=30)).trip
    assert trip.state == common_pb.TRIP_STATE_CONFIRMED, trip.failure_reason
    prices = {r.participant: r.price.minor_units for r in trip.reservations}
    assert prices["car"] == 7 * SUV_DAILY
    assert trip.total.minor_units == prices["flight"] + prices["hotel"] + prices["car"] == prices["payment"]
    names = step_names(trip)
    # reserved in parallel with flight and hotel, confirmed with them, before the payment is captured
    assert set(names[:3]) == {"flight.reserve", "hotel.reserve", "car.reserve"}
    assert set(names[5:8]) == {"flight.confirm", "hotel.confirm", "car.confirm"}
    assert names[8:] == ["payment.confirm", "notify.confirm"]
    assert trip.definition_version == "trip/2" and trip.definition_known
    assert trip.request.car == request.car
    body = (await wait_for_mail(mesh.mail_dir, request.trip_id)).get_payload(decode=True)
    assert isinstance(body, bytes) and b"Car: suv in Lisbon" in body
    async with mesh.participants["car"].engine.connect() as conn:
        status = (await conn.execute(text("SELECT status FROM reservations"))).scalar_one()
    assert status == "CONFIRMED"


async def test_a_car_that_cannot_be_had_releases_the_flight_and_the_hotel(mesh: Mesh) -> None:
    trip = (await mesh.stub.BookTrip(booking(car=car("Vienna", car_pb.CAR_CLASS_LUXURY)), timeout=30)).trip
    assert trip.state == common_pb.TRIP_STATE_CANCELLED
    assert "car.reserve was refused" in trip.failure_reason and "SOLD_OUT" in trip.failure_reason
    names = step_names(trip)
    assert {"flight.cancel", "hotel.cancel"} <= set(names)
    assert "car.cancel" not in names and "payment.reserve" not in names  # a refused hold held nothing


async def test_a_declined_card_releases_the_car_too(mesh: Mesh) -> None:
    trip = (await mesh.stub.BookTrip(booking(car=car(), payment_method_id="pm_ada_declined"), timeout=30)).trip
    assert trip.state == common_pb.TRIP_STATE_CANCELLED
    statuses = {r.participant: r.status for r in trip.reservations}
    assert statuses["car"] == common_pb.RESERVATION_STATUS_CANCELLED
    names = step_names(trip)
    assert names.index("notify.cancel") < names.index("car.cancel")


async def test_a_trip_without_a_car_has_no_car_step(mesh: Mesh) -> None:
    trip = (await mesh.stub.BookTrip(booking(), timeout=30)).trip
    assert trip.state == common_pb.TRIP_STATE_CONFIRMED
    assert not any(name.startswith("car.") for name in step_names(trip))


@pytest.mark.parametrize(
    ("build", "fields"),
    [
        (
            lambda: booking(car=trip_pb.TripCar()),
            {"car.city", "car.car_class", "car.pick_up_date", "car.drop_off_date"},
        ),
        (lambda: booking(car=car(days=(20, 18))), {"car.drop_off_date"}),
        (lambda: booking(car=car(car_class=car_pb.CAR_CLASS_UNSPECIFIED)), {"car.car_class"}),
    ],
    ids=["empty car", "drop-off before pick-up", "no car class"],
)
async def test_a_bad_car_is_refused_before_anything_is_written(mesh: Mesh, build: object, fields: set[str]) -> None:
    assert callable(build)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mesh.stub.BookTrip(build(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert all(field in details for field in fields), details
    async with mesh.coordinator.db.connect() as conn:
        assert (await conn.execute(text("SELECT COUNT(*) FROM trips"))).scalar_one() == 0


async def test_seats_asked_for_in_the_trip_are_held_and_shown(mesh: Mesh) -> None:
    request = booking(car=car())
    request.flight.seats.extend(["21c", "21D"])
    trip = (await mesh.stub.BookTrip(request, timeout=30)).trip
    assert trip.state == common_pb.TRIP_STATE_CONFIRMED, trip.failure_reason
    flight = next(r for r in trip.reservations if r.participant == "flight")
    assert {s.flight_id: list(s.seats) for s in flight.seats} == {
        "TM101-20270315": ["21C", "21D"],
        "TM102-20270322": ["21C", "21D"],
    }
    assert list(trip.request.flight.seats) == ["21C", "21D"]

    # the same seats for another trip: the flight refuses them by name and the rest is undone
    other = booking(car=car())
    other.flight.seats.extend(["21D", "21E"])
    refused = (await mesh.stub.BookTrip(other, timeout=30)).trip
    assert refused.state == common_pb.TRIP_STATE_CANCELLED
    assert "SEAT_TAKEN" in refused.failure_reason and "21D" in refused.failure_reason
    assert {"hotel.cancel", "car.cancel"} <= set(step_names(refused))

    bad = booking()
    bad.flight.seats.append("21A")  # two passengers, one seat
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await mesh.stub.BookTrip(bad, timeout=10)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "flight.seats" in (invalid.value.details() or "")
