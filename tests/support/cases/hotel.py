"""The hotel service as the participant contract tests see it (tests/support/participant_case.py).

Requests use the catalogue of services/hotel/catalogue.py: lis-alfama in Lisbon, whose 2 SUITE rooms
make the scarce resource and the SOLD_OUT refusal.
"""

from __future__ import annotations

from datetime import date

import grpc

from services.hotel.app import SPEC
from services.hotel.audit import check_conservation as check_conservation  # re-exported for the tests
from tests.support.participant_case import BadInput, ParticipantCase, Refusal
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import hotel_service_pb2_grpc as hotel_grpc

HOTEL = "lis-alfama"
SUITES = 2


def day(value: str) -> common_pb.Date:
    parsed = date.fromisoformat(value)
    return common_pb.Date(year=parsed.year, month=parsed.month, day=parsed.day)


def reserve(
    reservation_id: str,
    hotel_id: str = HOTEL,
    room_type: int = hotel_pb.ROOM_TYPE_STANDARD,
    check_in: str = "2027-03-15",
    check_out: str = "2027-03-22",
    rooms: int = 1,
) -> hotel_pb.HotelServiceReserveRequest:
    return hotel_pb.HotelServiceReserveRequest(
        reservation_id=reservation_id,
        hotel_id=hotel_id,
        room_type=room_type,  # type: ignore[arg-type]
        check_in=day(check_in),
        check_out=day(check_out),
        room_count=rooms,
    )


BAD_INPUTS = [
    BadInput("check-out before check-in", lambda rid: reserve(rid, check_out="2027-03-10"), "check_out"),
    BadInput("check-out on check-in", lambda rid: reserve(rid, check_out="2027-03-15"), "check_out"),
    BadInput("unknown hotel", lambda rid: reserve(rid, hotel_id="oslo-fjord"), "hotel_id"),
    BadInput("no room type", lambda rid: reserve(rid, room_type=hotel_pb.ROOM_TYPE_UNSPECIFIED), "room_type"),
    BadInput("six rooms", lambda rid: reserve(rid, rooms=6), "room_count"),
    BadInput("before the catalogue", lambda rid: reserve(rid, check_in="2027-02-20"), "check_in"),
    BadInput("empty id", lambda _rid: reserve(""), "reservation_id"),
]

REFUSALS = [
    Refusal(
        "more rooms than the hotel has suites",
        lambda rid: reserve(rid, room_type=hotel_pb.ROOM_TYPE_SUITE, rooms=SUITES + 1),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SOLD_OUT",
    ),
]


CASE = ParticipantCase(
    name="hotel",
    spec=SPEC,
    stub=hotel_grpc.HotelServiceStub,
    reserve_request=lambda rid: reserve(rid),
    other_request=lambda rid: reserve(rid, rooms=2),
    confirm_request=lambda rid: hotel_pb.HotelServiceConfirmRequest(reservation_id=rid),
    cancel_request=lambda rid: hotel_pb.HotelServiceCancelRequest(reservation_id=rid),
    get_request=lambda rid: hotel_pb.HotelServiceGetReservationRequest(reservation_id=rid),
    bad_inputs=BAD_INPUTS,
    refusals=REFUSALS,
    scarce_request=lambda rid: reserve(
        rid, room_type=hotel_pb.ROOM_TYPE_SUITE, check_in="2027-03-20", check_out="2027-03-23"
    ),
    scarce_capacity=SUITES,
    check_conservation=check_conservation,
    extra={"hotel_id": HOTEL, "city": "Lisbon"},
)
