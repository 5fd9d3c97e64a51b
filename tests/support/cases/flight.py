"""The flight service as the participant contract tests see it (tests/support/participant_case.py).

Requests use the catalogue of services/flight/catalogue.py: TM101 (LHR->LIS) out and TM102 back for the
valid bookings, and the regional TM401 (ZRH->VIE, 8 business seats) for scarcity and SOLD_OUT.
"""

from __future__ import annotations

import grpc

from services.flight.app import SPEC
from services.flight.audit import check_conservation as check_conservation  # re-exported for the tests
from tests.support.participant_case import BadInput, ParticipantCase, Refusal
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import flight_service_pb2_grpc as flight_grpc

OUTBOUND = "TM101-20270315"
RETURN = "TM102-20270322"
REGIONAL = "TM401-20270315"  # ZRH->VIE, 8 business seats
REGIONAL_BUSINESS_SEATS = 8


def reserve(
    reservation_id: str,
    outbound: str = OUTBOUND,
    back: str = RETURN,
    cabin: int = flight_pb.CABIN_ECONOMY,
    passengers: int = 1,
    seats: tuple[str, ...] = (),
) -> flight_pb.FlightServiceReserveRequest:
    return flight_pb.FlightServiceReserveRequest(
        reservation_id=reservation_id,
        outbound_flight_id=outbound,
        return_flight_id=back,
        cabin=cabin,  # type: ignore[arg-type]
        passenger_count=passengers,
        seats=seats,
    )


BAD_INPUTS = [
    BadInput("unknown outbound flight", lambda rid: reserve(rid, outbound="TM999-20270315"), "outbound_flight_id"),
    BadInput("unknown return flight", lambda rid: reserve(rid, back="TM102-20300101"), "return_flight_id"),
    BadInput("return before outbound", lambda rid: reserve(rid, back="TM102-20270314"), "return_flight_id"),
    BadInput("return on another route", lambda rid: reserve(rid, back="TM112-20270322"), "return_flight_id"),
    BadInput("zero passengers", lambda rid: reserve(rid, passengers=0), "passenger_count"),
    BadInput("a thousand passengers", lambda rid: reserve(rid, passengers=1000), "passenger_count"),
    BadInput("no cabin", lambda rid: reserve(rid, cabin=flight_pb.CABIN_UNSPECIFIED), "cabin"),
    BadInput("no outbound flight", lambda rid: reserve(rid, outbound=""), "outbound_flight_id"),
    BadInput("empty id", lambda _rid: reserve(""), "reservation_id"),
    BadInput("a seat the cabin does not have", lambda rid: reserve(rid, seats=("2A",)), "seats"),
    BadInput("a malformed seat", lambda rid: reserve(rid, seats=("window",)), "seats"),
    BadInput("fewer seats than passengers", lambda rid: reserve(rid, passengers=2, seats=("12A",)), "seats"),
]

REFUSALS = [
    Refusal(
        "9 passengers in business on an 8-seat cabin",
        lambda rid: reserve(rid, outbound="TM401-20270316", back="", cabin=flight_pb.CABIN_BUSINESS, passengers=9),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SOLD_OUT",
    ),
]


CASE = ParticipantCase(
    name="flight",
    spec=SPEC,
    stub=flight_grpc.FlightServiceStub,
    reserve_request=lambda rid: reserve(rid),
    other_request=lambda rid: reserve(rid, passengers=2),
    confirm_request=lambda rid: flight_pb.FlightServiceConfirmRequest(reservation_id=rid),
    cancel_request=lambda rid: flight_pb.FlightServiceCancelRequest(reservation_id=rid),
    get_request=lambda rid: flight_pb.FlightServiceGetReservationRequest(reservation_id=rid),
    bad_inputs=BAD_INPUTS,
    refusals=REFUSALS,
    scarce_request=lambda rid: reserve(rid, outbound=REGIONAL, back="", cabin=flight_pb.CABIN_BUSINESS),
    scarce_capacity=REGIONAL_BUSINESS_SEATS,
    check_conservation=check_conservation,
    extra={"outbound_flight_id": OUTBOUND, "return_flight_id": RETURN, "sold_out_flight_id": "TM401-20270316"},
)
