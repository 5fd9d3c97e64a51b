"""BookTrip and ChangeTrip requests to domain values, with every violation named by its field (INVALID_ARGUMENT).

Nothing is written for a request that fails here: validation runs before the trip is accepted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import date

from coordinator.trip import CarPart, FlightPart, HotelPart, TripRequest, flight_date
from services.kit.errors import FieldViolation, InvalidRequestError
from services.kit.money import CATALOGUE_CURRENCY
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

TRIP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
SEAT = re.compile(r"^[1-9][0-9]?[A-K]$")
MAX_NIGHTS = 30
MAX_CAR_DAYS = 30
CAR_CLASSES = "CAR_CLASS_ECONOMY, CAR_CLASS_COMPACT, CAR_CLASS_MIDSIZE, CAR_CLASS_SUV or CAR_CLASS_LUXURY"

_Bad = Callable[[str, str], None]


def parse_trip_id(trip_id: str, field: str = "trip_id") -> str:
    errors: list[FieldViolation] = []
    _id(trip_id, field, lambda f, d: errors.append(FieldViolation(f, d)))
    if errors:
        raise InvalidRequestError(errors)
    return trip_id


def parse_book_trip(request: trip_pb.BookTripRequest) -> TripRequest:
    errors: list[FieldViolation] = []

    def bad(field: str, description: str) -> None:
        errors.append(FieldViolation(field, description))

    _id(request.trip_id, "trip_id", bad)
    customer = request.customer
    if not customer.customer_id:
        bad("customer.customer_id", "must not be empty")
    elif len(customer.customer_id) > 128:
        bad("customer.customer_id", "must be at most 128 characters")
    if not EMAIL.match(customer.email) or len(customer.email) > 254:
        bad("customer.email", f"{customer.email!r} is not an e-mail address")
    if len(customer.name) > 200:
        bad("customer.name", "must be at most 200 characters")
    flight = _parse_flight(request.flight, bad) if request.HasField("flight") else None
    if flight is None and not request.HasField("flight"):
        bad("flight", "is required")
    hotel = _parse_hotel(request.hotel, bad) if request.HasField("hotel") else None
    car = _parse_car(request.car, bad) if request.HasField("car") else None
    if not request.payment_method_id:
        bad("payment_method_id", "must not be empty")
    currency = request.currency_code or CATALOGUE_CURRENCY
    if currency != CATALOGUE_CURRENCY:
        bad("currency_code", f"we do not take {currency!r}; trips are priced and paid in {CATALOGUE_CURRENCY}")
    if errors:
        raise InvalidRequestError(errors)
    assert flight is not None
    return TripRequest(
        trip_id=request.trip_id,
        customer_id=customer.customer_id,
        email=customer.email,
        name=customer.name,
        flight=flight,
        hotel=hotel,
        payment_method_id=request.payment_method_id,
        currency=currency,
        car=car,
    )


@dataclass(frozen=True)
class ChangeSpec:
    """A ChangeTrip request, parsed: the parts given replace the booked ones; None keeps them."""

    trip_id: str
    change_id: str
    flight: FlightPart | None
    hotel: HotelPart | None
    drop_hotel: bool
    car: CarPart | None
    drop_car: bool

    def applied_to(self, booked: TripRequest) -> TripRequest:
        """The trip as it will stand: the booked request with this change's parts."""
        hotel = None if self.drop_hotel else self.hotel or booked.hotel
        car = None if self.drop_car else self.car or booked.car
        return replace(booked, flight=self.flight or booked.flight, hotel=hotel, car=car)

    def fingerprint(self) -> str:
        body = {k: v for k, v in asdict(self).items() if k not in ("trip_id", "change_id")}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def parse_change_trip(request: trip_pb.ChangeTripRequest) -> ChangeSpec:
    errors: list[FieldViolation] = []

    def bad(field: str, description: str) -> None:
        errors.append(FieldViolation(field, description))

    trip_id = _id(request.trip_id, "trip_id", bad)
    change_id = _id(request.change_id, "change_id", bad)
    flight = _parse_flight(request.flight, bad) if request.HasField("flight") else None
    hotel = _parse_hotel(request.hotel, bad) if request.HasField("hotel") else None
    car = _parse_car(request.car, bad) if request.HasField("car") else None
    if request.drop_hotel and request.HasField("hotel"):
        bad("drop_hotel", "cannot drop the hotel and give a new one in the same change")
    if request.drop_car and request.HasField("car"):
        bad("drop_car", "cannot drop the car and give a new one in the same change")
    given = request.HasField("flight") or request.HasField("hotel") or request.HasField("car")
    if not (given or request.drop_hotel or request.drop_car):
        bad("flight", "a change needs a new flight, hotel or car, or drop_hotel or drop_car")
    if errors:
        raise InvalidRequestError(errors)
    return ChangeSpec(trip_id, change_id, flight, hotel, request.drop_hotel, car, request.drop_car)


def _id(value: str, field: str, bad: _Bad) -> str:
    if not value:
        bad(field, "must not be empty")
    elif not TRIP_ID.match(value):
        bad(field, "must be 1-64 characters of letters, digits, '-', '_' and '.', starting with a letter or digit")
    return value


def _parse_flight(flight: trip_pb.TripFlight, bad: _Bad) -> FlightPart | None:
    outbound = _flight_date(flight.outbound_flight_id, "flight.outbound_flight_id", bad, required=True)
    back = _flight_date(flight.return_flight_id, "flight.return_flight_id", bad, required=False)
    if outbound and back:
        if flight.return_flight_id == flight.outbound_flight_id:
            bad("flight.return_flight_id", "must differ from the outbound flight")
        elif back < outbound:
            bad("flight.return_flight_id", f"the return ({back}) is before the departure ({outbound})")
    if flight.cabin not in (1, 2, 3):
        bad("flight.cabin", "must be CABIN_ECONOMY, CABIN_PREMIUM_ECONOMY or CABIN_BUSINESS")
    if not 1 <= flight.passenger_count <= 9:
        bad("flight.passenger_count", f"must be between 1 and 9, got {flight.passenger_count}")
    seats = tuple(seat.strip().upper() for seat in flight.seats)
    if seats and len(seats) != flight.passenger_count:
        bad("flight.seats", f"one seat per passenger: {flight.passenger_count} wanted, got {len(seats)}")
    elif any(not SEAT.match(seat) for seat in seats) or len(set(seats)) != len(seats):
        bad("flight.seats", "each seat once, as a row and a letter, like 12A")
    cabin, count = int(flight.cabin), flight.passenger_count
    return FlightPart(flight.outbound_flight_id, flight.return_flight_id, cabin, count, tuple(sorted(seats)))


def _parse_hotel(hotel: trip_pb.TripHotel, bad: _Bad) -> HotelPart | None:
    if not hotel.hotel_id:
        bad("hotel.hotel_id", "must not be empty")
    if hotel.room_type not in (1, 2, 3):
        bad("hotel.room_type", "must be ROOM_TYPE_STANDARD, ROOM_TYPE_DELUXE or ROOM_TYPE_SUITE")
    check_in = _date(hotel.check_in, "hotel.check_in", bad)
    check_out = _date(hotel.check_out, "hotel.check_out", bad)
    if check_in and check_out:
        if check_out <= check_in:
            bad("hotel.check_out", f"must be after check-in ({check_in}), got {check_out}")
        elif (check_out - check_in).days > MAX_NIGHTS:
            bad("hotel.check_out", f"a stay is at most {MAX_NIGHTS} nights")
    room_count = hotel.room_count or 1
    if not 1 <= room_count <= 5:
        bad("hotel.room_count", f"must be between 1 and 5, got {hotel.room_count}")
    if not (check_in and check_out):
        return None
    return HotelPart(hotel.hotel_id, int(hotel.room_type), check_in.isoformat(), check_out.isoformat(), room_count)


def _parse_car(car: trip_pb.TripCar, bad: _Bad) -> CarPart | None:
    city = " ".join(car.city.split())
    if not city:
        bad("car.city", "must not be empty; give a city such as Lisbon")
    elif len(city) > 80:
        bad("car.city", "must be at most 80 characters")
    if car.car_class not in (1, 2, 3, 4, 5):
        bad("car.car_class", f"must be {CAR_CLASSES}")
    pick_up = _date(car.pick_up_date, "car.pick_up_date", bad)
    drop_off = _date(car.drop_off_date, "car.drop_off_date", bad)
    if pick_up and drop_off:
        if drop_off <= pick_up:
            bad("car.drop_off_date", f"must be after the pick-up ({pick_up}), got {drop_off}")
        elif (drop_off - pick_up).days > MAX_CAR_DAYS:
            bad("car.drop_off_date", f"a rental is at most {MAX_CAR_DAYS} days")
    if not (pick_up and drop_off):
        return None
    return CarPart(city, int(car.car_class), pick_up.isoformat(), drop_off.isoformat())


def _flight_date(flight_id: str, field: str, bad: _Bad, *, required: bool) -> date | None:
    if not flight_id:
        if required:
            bad(field, "must not be empty")
        return None
    parsed = flight_date(flight_id)
    if parsed is None:
        bad(field, f"{flight_id!r} is not a flight id like 'TM101-20270315' (flight number, date)")
    return parsed


def _date(value: common_pb.Date, field: str, bad: _Bad) -> date | None:
    try:
        return date(value.year, value.month, value.day)
    except ValueError:
        bad(field, "is required and must be a real date (year, month, day)")
        return None
