"""Seat choice on FlightService over real gRPC (a real aio server on port 0, a temporary SQLite file):
named seats, seats assigned side by side, SEAT_TAKEN, seats freed by cancel and expiry, and many
reservations racing for overlapping seats, none held twice. Every test ends with the flight audit,
which checks the seat rows against the seat counts."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import pytest

from services.flight.app import SPEC
from services.kit.clock import FakeClock
from services.kit.status import error_info
from services.participant.runner import RunningParticipant, start_participant
from tests.support.cases.flight import CASE, OUTBOUND, REGIONAL, RETURN, reserve
from tests.support.status import field_violations
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import flight_service_pb2_grpc as flight_grpc

pytestmark = pytest.mark.contract

BUSINESS = flight_pb.CABIN_BUSINESS


@dataclass
class Flight:
    running: RunningParticipant
    stub: flight_grpc.FlightServiceAsyncStub
    clock: FakeClock

    async def check(self) -> None:
        assert await CASE.check_conservation(self.running.engine) == []


@pytest.fixture
async def flight(tmp_path: Path) -> AsyncIterator[Flight]:
    clock = FakeClock()
    running = await start_participant(
        SPEC, database_url=f"sqlite+aiosqlite:///{tmp_path}/flight.db", clock=clock, hold_seconds=60, sweep_seconds=None
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = cast("flight_grpc.FlightServiceAsyncStub", flight_grpc.FlightServiceStub(channel))
        held = Flight(running, stub, clock)
        yield held
        await held.check()
    await running.stop()


def seats_of(
    response: flight_pb.FlightServiceReserveResponse | flight_pb.FlightServiceGetReservationResponse,
) -> dict[str, list[str]]:
    return {s.flight_id: list(s.seats) for s in response.seats}


async def test_named_seats_are_held_on_every_flight_and_shown(flight: Flight) -> None:
    held = await flight.stub.Reserve(reserve("named/flight", passengers=2, seats=("14c", "14A")))
    assert seats_of(held) == {OUTBOUND: ["14A", "14C"], RETURN: ["14A", "14C"]}
    got = await flight.stub.GetReservation(flight_pb.FlightServiceGetReservationRequest(reservation_id="named/flight"))
    assert seats_of(got) == seats_of(held)
    confirmed = await flight.stub.Confirm(flight_pb.FlightServiceConfirmRequest(reservation_id="named/flight"))
    assert {s.flight_id: list(s.seats) for s in confirmed.seats} == seats_of(held)
    # a repeat is the same reservation; the same id with other seats is a conflict (P1)
    again = await flight.stub.Reserve(reserve("named/flight", passengers=2, seats=("14A", "14C")))
    assert seats_of(again) == seats_of(held)
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await flight.stub.Reserve(reserve("named/flight", passengers=2, seats=("15A", "15B")))
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_a_party_is_seated_side_by_side(flight: Flight) -> None:
    first = await flight.stub.Reserve(reserve("a/flight", back="", passengers=3))
    assert seats_of(first) == {OUTBOUND: ["10A", "10B", "10C"]}
    await flight.stub.Reserve(reserve("b/flight", back="", seats=("10E",)))
    second = await flight.stub.Reserve(reserve("c/flight", back="", passengers=2))
    assert seats_of(second) == {OUTBOUND: ["11A", "11B"]}  # 10D and 10F are not side by side
    repeat = await flight.stub.Reserve(reserve("c/flight", back="", passengers=2))
    assert seats_of(repeat) == seats_of(second)  # a repeat holds nothing more and says the same


async def test_a_taken_seat_is_refused_by_name_and_holds_nothing(flight: Flight) -> None:
    await flight.stub.Reserve(reserve("first/flight", passengers=2, seats=("20A", "20B")))
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await flight.stub.Reserve(reserve("second/flight", passengers=2, seats=("20B", "20C")))
    assert taken.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(taken.value)
    assert info is not None and (info.reason, info.metadata["seat"]) == ("SEAT_TAKEN", "20B")
    assert "20B" in (taken.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await flight.stub.GetReservation(flight_pb.FlightServiceGetReservationRequest(reservation_id="second/flight"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_seat_the_cabin_does_not_have_is_invalid(flight: Flight) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await flight.stub.Reserve(reserve("biz/flight", back="", cabin=BUSINESS, seats=("1B",)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error.value)) == {"seats"}
    assert "not a BUSINESS seat" in (error.value.details() or "")


async def test_cancel_and_expiry_give_the_seats_back(flight: Flight) -> None:
    await flight.stub.Reserve(reserve("gone/flight", seats=("30F",)))
    await flight.stub.Cancel(flight_pb.FlightServiceCancelRequest(reservation_id="gone/flight"))
    got = await flight.stub.GetReservation(flight_pb.FlightServiceGetReservationRequest(reservation_id="gone/flight"))
    assert seats_of(got) == {}
    await flight.stub.Reserve(reserve("late/flight", seats=("30F",)))  # free again
    flight.clock.advance(61)
    assert await flight.running.store.expire_due() == 1
    taken_again = await flight.stub.Reserve(reserve("next/flight", seats=("30F",)))
    assert seats_of(taken_again)[OUTBOUND] == ["30F"]


async def test_racing_parties_never_hold_one_seat_twice(flight: Flight) -> None:
    """40 reservations at once on the 8-seat regional business cabin, half naming overlapping seats."""
    rng = random.Random(7)
    layout = ["1A", "1C", "1D", "1F", "2A", "2C", "2D", "2F"]
    requests = []
    for i in range(40):
        party = rng.choice((1, 1, 2))
        named = tuple(rng.sample(layout, party)) if i % 2 else ()
        rid = f"race-{i}/flight"
        requests.append(reserve(rid, outbound=REGIONAL, back="", cabin=BUSINESS, passengers=party, seats=named))
    results = await asyncio.gather(*(flight.stub.Reserve(r) for r in requests), return_exceptions=True)
    won = [r for r in results if isinstance(r, flight_pb.FlightServiceReserveResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert won and refused
    assert {e.code() for e in refused} <= {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}
    held = [seat for r in won for seat in r.seats[0].seats]
    assert len(held) == len(set(held)) <= 8
    assert sum(r.passenger_count for r in won) == len(held)
