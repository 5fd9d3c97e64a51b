"""FlightService in-process: a real aio server on port 0 with a temporary SQLite database, called through
the generated stubs. Searches, the whole hold life cycle, refusals and seat counts read back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import grpc
import pytest
from sqlalchemy import func, select

from services.flight.app import SPEC
from services.flight.models import reservations
from services.kit.clock import FakeClock
from services.kit.status import error_info
from services.participant.runner import RunningParticipant, start_participant
from tests.support.cases.flight import CASE, reserve
from tests.support.databases import Databases
from tests.support.participant_case import BadInput
from tests.support.status import field_violations
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import flight_service_pb2_grpc as flight_grpc

pytestmark = [pytest.mark.contract, pytest.mark.postgresql]

MARCH_15 = common_pb.Date(year=2027, month=3, day=15)


@dataclass
class Flight:
    running: RunningParticipant
    stub: flight_grpc.FlightServiceAsyncStub
    clock: FakeClock


@pytest.fixture
async def flight(databases: Databases) -> AsyncIterator[Flight]:
    clock = FakeClock()
    running = await start_participant(
        SPEC, database_url=databases.url("flight"), clock=clock, hold_seconds=60, sweep_seconds=None
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = cast("flight_grpc.FlightServiceAsyncStub", flight_grpc.FlightServiceStub(channel))
        yield Flight(running, stub, clock)
    await running.stop()


async def seats(flight: Flight, origin: str, destination: str, day: common_pb.Date) -> dict[tuple[str, int], int]:
    found = await flight.stub.SearchFlights(
        flight_pb.SearchFlightsRequest(origin=origin, destination=destination, departure_date=day)
    )
    return {(f.flight_id, c.cabin): c.seats_available for f in found.flights for c in f.cabins}


async def assert_conserved(flight: Flight) -> None:
    assert await CASE.check_conservation(flight.running.engine) == []


async def test_search_lists_the_days_flights_with_cabins_and_fares(flight: Flight) -> None:
    found = await flight.stub.SearchFlights(
        flight_pb.SearchFlightsRequest(origin="LHR", destination="lis", departure_date=MARCH_15, passenger_count=2)
    )
    assert [f.flight_id for f in found.flights] == ["TM101-20270315", "TM103-20270315"]
    first = found.flights[0]
    assert (first.origin, first.destination, first.departure_time) == ("LHR", "LIS", "08:05")
    assert [(c.cabin, c.seats_capacity, c.seats_available) for c in first.cabins] == [
        (flight_pb.CABIN_ECONOMY, 150, 150),
        (flight_pb.CABIN_PREMIUM_ECONOMY, 24, 24),
        (flight_pb.CABIN_BUSINESS, 12, 12),
    ]
    assert first.cabins[0].fare == common_pb.Money(currency_code="EUR", minor_units=13800)


async def test_search_outside_the_catalogue_is_an_empty_list(flight: Flight) -> None:
    day = common_pb.Date(year=2027, month=6, day=1)
    found = await flight.stub.SearchFlights(
        flight_pb.SearchFlightsRequest(origin="LHR", destination="LIS", departure_date=day)
    )
    assert list(found.flights) == []


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (flight_pb.SearchFlightsRequest(origin="XXX", destination="LIS", departure_date=MARCH_15), "origin"),
        (flight_pb.SearchFlightsRequest(origin="LHR", destination="OSL", departure_date=MARCH_15), "destination"),
        (flight_pb.SearchFlightsRequest(origin="LHR", destination="LHR", departure_date=MARCH_15), "destination"),
        (flight_pb.SearchFlightsRequest(origin="LHR", destination="LIS"), "departure_date"),
        (
            flight_pb.SearchFlightsRequest(
                origin="LHR", destination="LIS", departure_date=common_pb.Date(year=2027, month=2, day=30)
            ),
            "departure_date",
        ),
        (
            flight_pb.SearchFlightsRequest(
                origin="LHR", destination="LIS", departure_date=MARCH_15, passenger_count=10
            ),
            "passenger_count",
        ),
    ],
)
async def test_bad_searches_name_the_field(
    flight: Flight, request_: flight_pb.SearchFlightsRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await flight.stub.SearchFlights(request_)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error.value)) == {field}


async def test_a_round_trip_is_held_confirmed_and_cancelled(flight: Flight) -> None:
    held = await flight.stub.Reserve(reserve("trip-1/flight", passengers=2))
    assert held.reservation.status == common_pb.RESERVATION_STATUS_HELD
    assert held.reservation.price == common_pb.Money(currency_code="EUR", minor_units=2 * (13800 + 13800))
    assert list(held.flight_ids) == ["TM101-20270315", "TM102-20270322"]
    assert (held.cabin, held.passenger_count) == (flight_pb.CABIN_ECONOMY, 2)
    assert (await seats(flight, "LHR", "LIS", MARCH_15))[("TM101-20270315", flight_pb.CABIN_ECONOMY)] == 148
    back = common_pb.Date(year=2027, month=3, day=22)
    assert (await seats(flight, "LIS", "LHR", back))[("TM102-20270322", flight_pb.CABIN_ECONOMY)] == 148
    await assert_conserved(flight)

    again = await flight.stub.Reserve(reserve("trip-1/flight", passengers=2))
    assert again.reservation == held.reservation
    confirmed = await flight.stub.Confirm(flight_pb.FlightServiceConfirmRequest(reservation_id="trip-1/flight"))
    assert confirmed.reservation.status == common_pb.RESERVATION_STATUS_CONFIRMED
    assert (await seats(flight, "LHR", "LIS", MARCH_15))[("TM101-20270315", flight_pb.CABIN_ECONOMY)] == 148
    await assert_conserved(flight)

    cancelled = await flight.stub.Cancel(flight_pb.FlightServiceCancelRequest(reservation_id="trip-1/flight"))
    assert cancelled.reservation.status == common_pb.RESERVATION_STATUS_CANCELLED
    assert (await seats(flight, "LHR", "LIS", MARCH_15))[("TM101-20270315", flight_pb.CABIN_ECONOMY)] == 150
    assert (await seats(flight, "LIS", "LHR", back))[("TM102-20270322", flight_pb.CABIN_ECONOMY)] == 150
    await assert_conserved(flight)


async def test_an_expired_hold_gives_its_seats_back(flight: Flight) -> None:
    await flight.stub.Reserve(reserve("trip-2/flight", back="", cabin=flight_pb.CABIN_BUSINESS, passengers=3))
    assert (await seats(flight, "LHR", "LIS", MARCH_15))[("TM101-20270315", flight_pb.CABIN_BUSINESS)] == 9
    flight.clock.advance(61)
    assert await flight.running.store.expire_due() == 1
    assert (await seats(flight, "LHR", "LIS", MARCH_15))[("TM101-20270315", flight_pb.CABIN_BUSINESS)] == 12
    got = await flight.stub.GetReservation(flight_pb.FlightServiceGetReservationRequest(reservation_id="trip-2/flight"))
    assert got.reservation.status == common_pb.RESERVATION_STATUS_EXPIRED
    await assert_conserved(flight)


@pytest.mark.parametrize("bad", CASE.bad_inputs, ids=[b.label for b in CASE.bad_inputs])
async def test_bad_reserves_name_the_field_and_write_nothing(flight: Flight, bad: BadInput) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await flight.stub.Reserve(bad.build("bad-1/flight"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.field in set(field_violations(error.value))
    async with flight.running.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(reservations))).scalar_one() == 0
    await assert_conserved(flight)


async def test_nine_in_business_on_the_regional_jet_is_sold_out(flight: Flight) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await flight.stub.Reserve(
            reserve("big/flight", outbound="TM401-20270316", back="", cabin=flight_pb.CABIN_BUSINESS, passengers=9)
        )
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(error.value)
    assert info is not None
    assert info.reason == "SOLD_OUT"
    assert info.metadata["seats_available"] == "8"
    assert "TM401-20270316 has 8 BUSINESS seats left; 9 requested" in (error.value.details() or "")


async def test_concurrent_holds_never_oversell(flight: Flight) -> None:
    calls = [flight.stub.Reserve(CASE.scarce_request(f"race-{i}/flight")) for i in range(3 * CASE.scarce_capacity)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    won = [r for r in results if isinstance(r, flight_pb.FlightServiceReserveResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == CASE.scarce_capacity
    assert {e.code() for e in lost} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    await assert_conserved(flight)
