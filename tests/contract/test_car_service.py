"""CarService in-process: a real aio server on port 0 with a temporary SQLite database, called through
the generated stubs. Searches, the whole rental life cycle, all-or-nothing rentals and fleet counts read
back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import pytest
from sqlalchemy import func, select

from services.car.app import SPEC
from services.car.models import reservations
from services.kit.clock import FakeClock
from services.kit.status import error_info
from services.participant.runner import RunningParticipant, start_participant
from tests.support.cases.car import CASE, day, reserve
from tests.support.participant_case import BadInput
from tests.support.status import field_violations
from tripmesh.v1 import car_service_pb2 as car_pb
from tripmesh.v1 import car_service_pb2_grpc as car_grpc
from tripmesh.v1 import common_pb2 as common_pb

pytestmark = pytest.mark.contract

ECONOMY, COMPACT, MIDSIZE, SUV, LUXURY = (
    car_pb.CAR_CLASS_ECONOMY,
    car_pb.CAR_CLASS_COMPACT,
    car_pb.CAR_CLASS_MIDSIZE,
    car_pb.CAR_CLASS_SUV,
    car_pb.CAR_CLASS_LUXURY,
)


@dataclass
class Car:
    running: RunningParticipant
    stub: car_grpc.CarServiceAsyncStub
    clock: FakeClock


@pytest.fixture
async def car(tmp_path: Path) -> AsyncIterator[Car]:
    clock = FakeClock()
    running = await start_participant(
        SPEC, database_url=f"sqlite+aiosqlite:///{tmp_path}/car.db", clock=clock, hold_seconds=60, sweep_seconds=None
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = cast("car_grpc.CarServiceAsyncStub", car_grpc.CarServiceStub(channel))
        yield Car(running, stub, clock)
    await running.stop()


async def cars(car: Car, pick_up: str, drop_off: str, city: str = "Lisbon") -> dict[int, int]:
    found = await car.stub.SearchCars(
        car_pb.SearchCarsRequest(city=city, pick_up_date=day(pick_up), drop_off_date=day(drop_off))
    )
    return {offer.car_class: offer.cars_available for offer in found.cars}


async def assert_conserved(car: Car) -> None:
    assert await CASE.check_conservation(car.running.engine) == []


def euros(minor_units: int) -> common_pb.Money:
    return common_pb.Money(currency_code="EUR", minor_units=minor_units)


async def test_search_lists_the_classes_free_with_the_price_of_the_rental(car: Car) -> None:
    found = await car.stub.SearchCars(
        car_pb.SearchCarsRequest(city=" lisbon ", pick_up_date=day("2027-03-15"), drop_off_date=day("2027-03-18"))
    )
    assert found.city == "Lisbon"
    assert [(c.car_class, c.cars_available) for c in found.cars] == [
        (ECONOMY, 10),
        (COMPACT, 8),
        (MIDSIZE, 6),
        (SUV, 4),
        (LUXURY, 2),
    ]
    suv = found.cars[3]
    assert (suv.daily_rate, suv.total) == (euros(8900), euros(3 * 8900))


async def test_search_leaves_out_classes_the_city_does_not_have(car: Car) -> None:
    assert LUXURY not in await cars(car, "2027-03-15", "2027-03-18", city="Vienna")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (
            car_pb.SearchCarsRequest(city="Oslo", pick_up_date=day("2027-03-15"), drop_off_date=day("2027-03-18")),
            "city",
        ),
        (
            car_pb.SearchCarsRequest(city="Lisbon", pick_up_date=day("2027-03-15"), drop_off_date=day("2027-03-15")),
            "drop_off_date",
        ),
        (
            car_pb.SearchCarsRequest(city="Lisbon", pick_up_date=day("2027-03-01"), drop_off_date=day("2027-04-05")),
            "drop_off_date",
        ),
        (car_pb.SearchCarsRequest(city="Lisbon", drop_off_date=day("2027-03-18")), "pick_up_date"),
    ],
)
async def test_bad_searches_name_the_field(car: Car, request_: car_pb.SearchCarsRequest, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await car.stub.SearchCars(request_)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error.value)) == {field}


async def test_a_rental_is_held_confirmed_and_cancelled(car: Car) -> None:
    request = reserve("trip-1/car", city="lisbon", car_class=SUV, pick_up="2027-03-15", drop_off="2027-03-18")
    held = await car.stub.Reserve(request)
    assert held.reservation.status == common_pb.RESERVATION_STATUS_HELD
    assert held.reservation.price == euros(3 * 8900)
    assert (held.city, held.car_class, held.days) == ("Lisbon", SUV, 3)
    assert (await cars(car, "2027-03-15", "2027-03-18"))[SUV] == 3
    assert (await cars(car, "2027-03-18", "2027-03-19"))[SUV] == 4  # the drop-off day is free again
    await assert_conserved(car)

    # "Lisbon" and "lisbon" are one rental: the repeat returns it and holds nothing more (P1).
    again = await car.stub.Reserve(reserve("trip-1/car", car_class=SUV, pick_up="2027-03-15", drop_off="2027-03-18"))
    assert again.reservation == held.reservation
    confirmed = await car.stub.Confirm(car_pb.CarServiceConfirmRequest(reservation_id="trip-1/car"))
    assert confirmed.reservation.status == common_pb.RESERVATION_STATUS_CONFIRMED
    await assert_conserved(car)

    cancelled = await car.stub.Cancel(car_pb.CarServiceCancelRequest(reservation_id="trip-1/car"))
    assert cancelled.reservation.status == common_pb.RESERVATION_STATUS_CANCELLED
    assert (await cars(car, "2027-03-15", "2027-03-18"))[SUV] == 4
    await assert_conserved(car)


async def test_a_rental_is_held_on_all_its_days_or_none(car: Car) -> None:
    await car.stub.Reserve(reserve("a/car", car_class=LUXURY, pick_up="2027-03-20", drop_off="2027-03-23"))
    await car.stub.Reserve(reserve("b/car", car_class=LUXURY, pick_up="2027-03-22", drop_off="2027-03-25"))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await car.stub.Reserve(reserve("c/car", car_class=LUXURY, pick_up="2027-03-21", drop_off="2027-03-24"))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(error.value)
    assert info is not None
    assert (info.reason, info.metadata["day"], info.metadata["car_class"]) == ("SOLD_OUT", "2027-03-22", "LUXURY")
    # The days around the full one were not taken by the refused rental.
    assert (await cars(car, "2027-03-21", "2027-03-22"))[LUXURY] == 1
    assert (await cars(car, "2027-03-23", "2027-03-24"))[LUXURY] == 1
    await assert_conserved(car)


async def test_the_last_day_on_hire_can_be_booked(car: Car) -> None:
    held = await car.stub.Reserve(reserve("last/car", pick_up="2027-04-29", drop_off="2027-04-30"))
    assert (held.days, held.reservation.price) == (1, euros(4900))


async def test_an_expired_hold_gives_its_car_back(car: Car) -> None:
    await car.stub.Reserve(reserve("late/car", car_class=LUXURY))
    assert (await cars(car, "2027-03-15", "2027-03-22"))[LUXURY] == 1
    car.clock.advance(61)
    assert await car.running.store.expire_due() == 1
    assert (await cars(car, "2027-03-15", "2027-03-22"))[LUXURY] == 2
    await assert_conserved(car)


@pytest.mark.parametrize("bad", CASE.bad_inputs, ids=[b.label for b in CASE.bad_inputs])
async def test_bad_reserves_name_the_field_and_write_nothing(car: Car, bad: BadInput) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await car.stub.Reserve(bad.build("bad-1/car"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.field in set(field_violations(error.value))
    async with car.running.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(reservations))).scalar_one() == 0
    await assert_conserved(car)


async def test_concurrent_holds_never_hire_one_car_twice(car: Car) -> None:
    calls = [car.stub.Reserve(CASE.scarce_request(f"race-{i}/car")) for i in range(5 * CASE.scarce_capacity)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    won = [r for r in results if isinstance(r, car_pb.CarServiceReserveResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == CASE.scarce_capacity
    assert {e.code() for e in lost} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    await assert_conserved(car)
