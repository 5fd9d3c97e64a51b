"""The flight domain, pure: what a seat booking is, how requests are validated and priced. No I/O.

A booking holds `passenger_count` seats in one cabin on an outbound flight and, optionally, on a
return flight that flies back from the outbound's destination to its origin after the outbound lands.
Checks that need the catalogue (does the flight exist?) run in the inventory, inside the transaction;
everything that can be decided from the request alone is decided here, so it is tested without I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

from services.kit.errors import FieldViolation, InvalidRequestError
from services.kit.money import CATALOGUE_CURRENCY, Money

CATALOGUE_START = date(2027, 3, 1)
CATALOGUE_DAYS = 60
CATALOGUE_END = CATALOGUE_START + timedelta(days=CATALOGUE_DAYS - 1)  # last day with flights

MAX_PASSENGERS = 9
MAX_FLIGHT_ID_LENGTH = 32


class Cabin(StrEnum):
    ECONOMY = "ECONOMY"
    PREMIUM_ECONOMY = "PREMIUM_ECONOMY"
    BUSINESS = "BUSINESS"


CABIN_CHOICES = ", ".join(c.value for c in Cabin)


@dataclass(frozen=True, slots=True)
class FlightBooking:
    """The details of one flight reservation, as stored with it (enough to release it)."""

    outbound_flight_id: str
    return_flight_id: str | None
    cabin: Cabin
    passenger_count: int
    seats: tuple[str, ...] = ()  # named seats, held on every flight; empty: assigned by the service

    @property
    def flight_ids(self) -> tuple[str, ...]:
        if self.return_flight_id is None:
            return (self.outbound_flight_id,)
        return (self.outbound_flight_id, self.return_flight_id)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "outbound_flight_id": self.outbound_flight_id,
            "return_flight_id": self.return_flight_id,
            "cabin": self.cabin.value,
            "passenger_count": self.passenger_count,
        }
        if self.seats:  # a booking without named seats is stored (and fingerprinted) as before seats
            data["seats"] = list(self.seats)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FlightBooking:
        return cls(
            outbound_flight_id=str(data["outbound_flight_id"]),
            return_flight_id=None if data.get("return_flight_id") is None else str(data["return_flight_id"]),
            cabin=Cabin(data["cabin"]),
            passenger_count=int(data["passenger_count"]),
            seats=tuple(str(s) for s in data.get("seats", ())),
        )


@dataclass(frozen=True, slots=True)
class FlightQuery:
    """A validated SearchFlights request."""

    origin: str
    destination: str
    departure_date: date
    passenger_count: int


@dataclass(frozen=True, slots=True)
class Leg:
    """What the return-flight rule needs to know about one catalogue flight."""

    flight_id: str
    origin: str
    destination: str
    departure_at: datetime  # UTC
    arrival_at: datetime  # UTC


@dataclass(frozen=True, slots=True)
class CabinOffer:
    cabin: Cabin
    capacity: int
    available: int
    fare: Money


@dataclass(frozen=True, slots=True)
class FlightOffer:
    flight_id: str
    flight_number: str
    origin: str
    destination: str
    departure_date: date
    departure_time: str  # local "HH:MM"
    duration_minutes: int
    cabins: tuple[CabinOffer, ...]


class _Violations:
    """Collects every problem of a request so that the caller learns them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_any(self) -> None:
        if self.items:
            raise InvalidRequestError(self.items)


def _passenger_problem(count: int) -> str | None:
    if 1 <= count <= MAX_PASSENGERS:
        return None
    return f"must be between 1 and {MAX_PASSENGERS}, got {count}"


def _flight_id(raw: str, field: str, problems: _Violations, *, required: bool) -> str | None:
    value = raw.strip().upper()
    if not value:
        if required:
            problems.add(field, "must not be empty; give a flight id such as TM101-20270315")
        return None
    if len(value) > MAX_FLIGHT_ID_LENGTH:
        problems.add(field, f"must be at most {MAX_FLIGHT_ID_LENGTH} characters, such as TM101-20270315")
        return None
    return value


def new_booking(
    outbound_flight_id: str, return_flight_id: str, cabin: Cabin | None, passenger_count: int
) -> FlightBooking:
    """Validate a Reserve request (empty return id means one way); raise InvalidRequestError."""
    problems = _Violations()
    outbound = _flight_id(outbound_flight_id, "outbound_flight_id", problems, required=True)
    back = _flight_id(return_flight_id, "return_flight_id", problems, required=False)
    if outbound is not None and back == outbound:
        problems.add("return_flight_id", "must differ from outbound_flight_id")
    if cabin is None:
        problems.add("cabin", f"must be one of {CABIN_CHOICES}")
    if (problem := _passenger_problem(passenger_count)) is not None:
        problems.add("passenger_count", problem)
    problems.raise_any()
    assert outbound is not None and cabin is not None
    return FlightBooking(outbound, back, cabin, passenger_count)


def _airport_code(raw: str, field: str, problems: _Violations) -> str:
    code = raw.strip().upper()
    if not code:
        problems.add(field, "must not be empty; give an IATA airport code such as LHR")
    elif len(code) != 3 or not code.isalpha() or not code.isascii():
        problems.add(field, f"must be a three-letter IATA airport code such as LHR, got {raw!r}")
    return code


def new_query(origin: str, destination: str, departure_date: date | None, passenger_count: int) -> FlightQuery:
    """Validate a SearchFlights request (passenger_count 0 means 1); raise InvalidRequestError."""
    problems = _Violations()
    origin_code = _airport_code(origin, "origin", problems)
    destination_code = _airport_code(destination, "destination", problems)
    if origin_code and origin_code == destination_code:
        problems.add("destination", f"must differ from the origin ({origin_code})")
    if departure_date is None:
        problems.add("departure_date", "must be a real calendar date (year, month and day)")
    count = passenger_count or 1
    if (problem := _passenger_problem(count)) is not None:
        problems.add("passenger_count", problem)
    problems.raise_any()
    assert departure_date is not None
    return FlightQuery(origin_code, destination_code, departure_date, count)


def unknown_airports(query: FlightQuery, known: Iterable[str]) -> None:
    """Raise InvalidRequestError naming origin/destination when the catalogue has no such airport."""
    known_codes = set(known)
    problems = _Violations()
    for field, code in (("origin", query.origin), ("destination", query.destination)):
        if code not in known_codes:
            problems.add(field, f"unknown airport {code!r}; known airports: {', '.join(sorted(known_codes))}")
    problems.raise_any()


def unknown_flight(field: str, flight_id: str) -> InvalidRequestError:
    return InvalidRequestError.of(field, f"no flight {flight_id!r} in the catalogue")


def check_return(outbound: Leg, back: Leg) -> None:
    """The return flight must fly the outbound's route backwards and leave after the outbound lands."""
    if (back.origin, back.destination) != (outbound.destination, outbound.origin):
        raise InvalidRequestError.of(
            "return_flight_id",
            f"the return flight {back.flight_id} flies {back.origin}->{back.destination}, not back from "
            f"{outbound.destination} to {outbound.origin}",
        )
    if back.departure_at <= outbound.arrival_at:
        raise InvalidRequestError.of(
            "return_flight_id",
            f"the return flight {back.flight_id} departs before the outbound flight {outbound.flight_id} arrives",
        )


def price(fares_minor: Sequence[int], passenger_count: int) -> Money:
    """Fare of one seat on each segment, times the passengers, summed over the segments."""
    return Money(sum(fares_minor) * passenger_count, CATALOGUE_CURRENCY)


def sold_out_message(flight_id: str, cabin: Cabin, wanted: int, available: int) -> str:
    seats = "seat" if available == 1 else "seats"
    return f"{flight_id} has {available} {cabin.value} {seats} left; {wanted} requested"
