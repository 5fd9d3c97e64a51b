"""HotelService in-process: a real aio server on port 0 with a temporary SQLite database, called through
the generated stubs. Searches, the whole hold life cycle, all-or-nothing stays and room counts read back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import grpc
import pytest
from sqlalchemy import func, select

from services.hotel.app import SPEC
from services.hotel.models import reservations
from services.kit.clock import FakeClock
from services.kit.status import error_info
from services.participant.runner import RunningParticipant, start_participant
from tests.support.cases.hotel import CASE, day, reserve
from tests.support.databases import Databases
from tests.support.participant_case import BadInput
from tests.support.status import field_violations
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import hotel_service_pb2_grpc as hotel_grpc

pytestmark = [pytest.mark.contract, pytest.mark.postgresql]

STANDARD, DELUXE, SUITE = hotel_pb.ROOM_TYPE_STANDARD, hotel_pb.ROOM_TYPE_DELUXE, hotel_pb.ROOM_TYPE_SUITE


@dataclass
class Hotel:
    running: RunningParticipant
    stub: hotel_grpc.HotelServiceAsyncStub
    clock: FakeClock


@pytest.fixture
async def hotel(databases: Databases) -> AsyncIterator[Hotel]:
    clock = FakeClock()
    running = await start_participant(
        SPEC, database_url=databases.url("hotel"), clock=clock, hold_seconds=60, sweep_seconds=None
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = cast("hotel_grpc.HotelServiceAsyncStub", hotel_grpc.HotelServiceStub(channel))
        yield Hotel(running, stub, clock)
    await running.stop()


async def rooms(hotel: Hotel, check_in: str, check_out: str, city: str = "Lisbon") -> dict[tuple[str, int], int]:
    found = await hotel.stub.SearchHotels(
        hotel_pb.SearchHotelsRequest(city=city, check_in=day(check_in), check_out=day(check_out))
    )
    return {(h.hotel_id, r.room_type): r.rooms_available for h in found.hotels for r in h.rooms}


async def assert_conserved(hotel: Hotel) -> None:
    assert await CASE.check_conservation(hotel.running.engine) == []


def euros(minor_units: int) -> common_pb.Money:
    return common_pb.Money(currency_code="EUR", minor_units=minor_units)


async def test_search_lists_the_citys_hotels_with_rates_for_the_stay(hotel: Hotel) -> None:
    found = await hotel.stub.SearchHotels(
        hotel_pb.SearchHotelsRequest(
            city="lisbon", check_in=day("2027-03-15"), check_out=day("2027-03-18"), room_count=2
        )
    )
    assert [(h.hotel_id, h.city, h.stars) for h in found.hotels] == [
        ("lis-alfama", "Lisbon", 4),
        ("lis-chiado", "Lisbon", 5),
    ]
    alfama = found.hotels[0]
    assert [(r.room_type, r.rooms_available) for r in alfama.rooms] == [(STANDARD, 20), (DELUXE, 8), (SUITE, 2)]
    standard = alfama.rooms[0]
    assert (standard.nightly_rate, standard.total) == (euros(12900), euros(2 * 3 * 12900))


async def test_search_leaves_out_room_types_without_enough_rooms(hotel: Hotel) -> None:
    found = await hotel.stub.SearchHotels(
        hotel_pb.SearchHotelsRequest(
            city="Lisbon", check_in=day("2027-03-15"), check_out=day("2027-03-18"), room_count=3
        )
    )
    assert {r.room_type for h in found.hotels for r in h.rooms} == {STANDARD, DELUXE}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (hotel_pb.SearchHotelsRequest(city="Oslo", check_in=day("2027-03-15"), check_out=day("2027-03-18")), "city"),
        (
            hotel_pb.SearchHotelsRequest(city="Lisbon", check_in=day("2027-03-15"), check_out=day("2027-03-15")),
            "check_out",
        ),
        (
            hotel_pb.SearchHotelsRequest(city="Lisbon", check_in=day("2027-03-01"), check_out=day("2027-04-05")),
            "check_out",
        ),
        (hotel_pb.SearchHotelsRequest(city="Lisbon", check_out=day("2027-03-18")), "check_in"),
    ],
)
async def test_bad_searches_name_the_field(hotel: Hotel, request_: hotel_pb.SearchHotelsRequest, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await hotel.stub.SearchHotels(request_)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error.value)) == {field}


async def test_a_stay_is_held_confirmed_and_cancelled(hotel: Hotel) -> None:
    request = reserve("trip-1/hotel", room_type=DELUXE, check_in="2027-03-15", check_out="2027-03-18", rooms=2)
    held = await hotel.stub.Reserve(request)
    assert held.reservation.status == common_pb.RESERVATION_STATUS_HELD
    assert held.reservation.price == euros(2 * 3 * 18900)
    assert (held.hotel_id, held.room_type, held.nights, held.room_count) == ("lis-alfama", DELUXE, 3, 2)
    assert (await rooms(hotel, "2027-03-15", "2027-03-18"))[("lis-alfama", DELUXE)] == 6
    assert (await rooms(hotel, "2027-03-18", "2027-03-19"))[("lis-alfama", DELUXE)] == 8
    await assert_conserved(hotel)

    assert (await hotel.stub.Reserve(request)).reservation == held.reservation
    confirmed = await hotel.stub.Confirm(hotel_pb.HotelServiceConfirmRequest(reservation_id="trip-1/hotel"))
    assert confirmed.reservation.status == common_pb.RESERVATION_STATUS_CONFIRMED
    await assert_conserved(hotel)

    cancelled = await hotel.stub.Cancel(hotel_pb.HotelServiceCancelRequest(reservation_id="trip-1/hotel"))
    assert cancelled.reservation.status == common_pb.RESERVATION_STATUS_CANCELLED
    assert (await rooms(hotel, "2027-03-15", "2027-03-18"))[("lis-alfama", DELUXE)] == 8
    await assert_conserved(hotel)


async def test_a_stay_is_held_on_all_its_nights_or_none(hotel: Hotel) -> None:
    await hotel.stub.Reserve(reserve("a/hotel", room_type=SUITE, check_in="2027-03-20", check_out="2027-03-23"))
    await hotel.stub.Reserve(reserve("b/hotel", room_type=SUITE, check_in="2027-03-22", check_out="2027-03-25"))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await hotel.stub.Reserve(reserve("c/hotel", room_type=SUITE, check_in="2027-03-21", check_out="2027-03-24"))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(error.value)
    assert info is not None
    assert (info.reason, info.metadata["night"], info.metadata["rooms_available"]) == ("SOLD_OUT", "2027-03-22", "0")
    # The nights around the full one were not taken by the refused stay.
    assert (await rooms(hotel, "2027-03-21", "2027-03-22"))[("lis-alfama", SUITE)] == 1
    assert (await rooms(hotel, "2027-03-23", "2027-03-24"))[("lis-alfama", SUITE)] == 1
    await assert_conserved(hotel)


async def test_the_last_night_on_sale_can_be_booked(hotel: Hotel) -> None:
    held = await hotel.stub.Reserve(reserve("last/hotel", check_in="2027-04-29", check_out="2027-04-30"))
    assert (held.nights, held.reservation.price) == (1, euros(12900))


async def test_an_expired_hold_gives_its_rooms_back(hotel: Hotel) -> None:
    await hotel.stub.Reserve(reserve("late/hotel", room_type=SUITE))
    assert ("lis-alfama", SUITE) in await rooms(hotel, "2027-03-15", "2027-03-22")
    hotel.clock.advance(61)
    assert await hotel.running.store.expire_due() == 1
    assert (await rooms(hotel, "2027-03-15", "2027-03-22"))[("lis-alfama", SUITE)] == 2
    await assert_conserved(hotel)


@pytest.mark.parametrize("bad", CASE.bad_inputs, ids=[b.label for b in CASE.bad_inputs])
async def test_bad_reserves_name_the_field_and_write_nothing(hotel: Hotel, bad: BadInput) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await hotel.stub.Reserve(bad.build("bad-1/hotel"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.field in set(field_violations(error.value))
    async with hotel.running.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(reservations))).scalar_one() == 0
    await assert_conserved(hotel)


async def test_concurrent_holds_never_oversell(hotel: Hotel) -> None:
    calls = [hotel.stub.Reserve(CASE.scarce_request(f"race-{i}/hotel")) for i in range(5 * CASE.scarce_capacity)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    won = [r for r in results if isinstance(r, hotel_pb.HotelServiceReserveResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == CASE.scarce_capacity
    assert {e.code() for e in lost} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    await assert_conserved(hotel)
