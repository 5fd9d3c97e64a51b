"""The car service as the participant contract tests see it (tests/support/participant_case.py).

Requests use the fleet of services/car/catalogue.py: Lisbon, whose 2 LUXURY cars make the scarce
resource, and Vienna, whose fleet has no LUXURY car, for the SOLD_OUT refusal.
"""

from __future__ import annotations

from datetime import date

import grpc

from services.car.app import SPEC
from services.car.audit import check_conservation as check_conservation  # re-exported for the tests
from tests.support.participant_case import BadInput, ParticipantCase, Refusal
from tripmesh.v1 import car_service_pb2 as car_pb
from tripmesh.v1 import car_service_pb2_grpc as car_grpc
from tripmesh.v1 import common_pb2 as common_pb

CITY = "Lisbon"
LUXURY_CARS = 2
DROP_OFF = "drop_off_date"


def day(value: str) -> common_pb.Date:
    parsed = date.fromisoformat(value)
    return common_pb.Date(year=parsed.year, month=parsed.month, day=parsed.day)


def reserve(
    reservation_id: str,
    city: str = CITY,
    car_class: int = car_pb.CAR_CLASS_COMPACT,
    pick_up: str = "2027-03-15",
    drop_off: str = "2027-03-22",
) -> car_pb.CarServiceReserveRequest:
    return car_pb.CarServiceReserveRequest(
        reservation_id=reservation_id,
        city=city,
        car_class=car_class,  # type: ignore[arg-type]
        pick_up_date=day(pick_up),
        drop_off_date=day(drop_off),
    )


BAD_INPUTS = [
    BadInput("drop-off before pick-up", lambda rid: reserve(rid, drop_off="2027-03-10"), "drop_off_date"),
    BadInput("drop-off on pick-up day", lambda rid: reserve(rid, drop_off="2027-03-15"), "drop_off_date"),
    BadInput("unknown city", lambda rid: reserve(rid, city="Oslo"), "city"),
    BadInput("no city", lambda rid: reserve(rid, city="  "), "city"),
    BadInput("no car class", lambda rid: reserve(rid, car_class=car_pb.CAR_CLASS_UNSPECIFIED), "car_class"),
    BadInput("before the catalogue", lambda rid: reserve(rid, pick_up="2027-02-20"), "pick_up_date"),
    BadInput("after the catalogue", lambda rid: reserve(rid, pick_up="2027-04-25", drop_off="2027-05-02"), DROP_OFF),
    BadInput("longer than 30 days", lambda rid: reserve(rid, pick_up="2027-03-01", drop_off="2027-04-05"), DROP_OFF),
    BadInput("empty id", lambda _rid: reserve(""), "reservation_id"),
]


def _luxury(rid: str) -> car_pb.CarServiceReserveRequest:
    return reserve(rid, car_class=car_pb.CAR_CLASS_LUXURY, pick_up="2027-04-10", drop_off="2027-04-12")


REFUSALS = [
    Refusal(
        "a luxury car in Vienna, whose fleet has none",
        lambda rid: reserve(rid, city="Vienna", car_class=car_pb.CAR_CLASS_LUXURY),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SOLD_OUT",
    ),
]

CASE = ParticipantCase(
    name="car",
    spec=SPEC,
    stub=car_grpc.CarServiceStub,
    reserve_request=lambda rid: reserve(rid),
    other_request=lambda rid: reserve(rid, car_class=car_pb.CAR_CLASS_SUV),
    confirm_request=lambda rid: car_pb.CarServiceConfirmRequest(reservation_id=rid),
    cancel_request=lambda rid: car_pb.CarServiceCancelRequest(reservation_id=rid),
    get_request=lambda rid: car_pb.CarServiceGetReservationRequest(reservation_id=rid),
    bad_inputs=BAD_INPUTS,
    refusals=REFUSALS,
    scarce_request=_luxury,
    scarce_capacity=LUXURY_CARS,
    check_conservation=check_conservation,
    extra={"city": CITY},
)
