"""The hotel domain, pure: what a room booking is, how requests are validated and priced. No I/O.

A booking holds `room_count` rooms of one type in one hotel for every night from check-in up to (not
including) check-out. The catalogue has a room count and a rate for every night from 2027-03-01 to
2027-04-29, so a stay may check out on 2027-04-30 at the latest. Checks that need the catalogue (does
the hotel exist?) run in the inventory, inside the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from typing import Any

from services.kit.errors import FieldViolation, InvalidRequestError
from services.kit.money import CATALOGUE_CURRENCY, Money

CATALOGUE_START = date(2027, 3, 1)  # the first night
CATALOGUE_DAYS = 60
LAST_NIGHT = CATALOGUE_START + timedelta(days=CATALOGUE_DAYS - 1)  # 2027-04-29
LAST_CHECK_OUT = LAST_NIGHT + timedelta(days=1)  # 2027-04-30

MAX_NIGHTS = 30
MAX_ROOMS = 5
MAX_HOTEL_ID_LENGTH = 64


class RoomType(StrEnum):
    STANDARD = "STANDARD"
    DELUXE = "DELUXE"
    SUITE = "SUITE"


ROOM_TYPE_CHOICES = ", ".join(r.value for r in RoomType)


@dataclass(frozen=True, slots=True)
class HotelBooking:
    """The details of one hotel reservation, as stored with it (enough to release it)."""

    hotel_id: str
    room_type: RoomType
    check_in: date
    check_out: date
    room_count: int

    @property
    def nights(self) -> int:
        return (self.check_out - self.check_in).days

    def to_json(self) -> dict[str, Any]:
        return {
            "hotel_id": self.hotel_id,
            "room_type": self.room_type.value,
            "check_in": self.check_in.isoformat(),
            "check_out": self.check_out.isoformat(),
            "room_count": self.room_count,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HotelBooking:
        return cls(
            hotel_id=str(data["hotel_id"]),
            room_type=RoomType(data["room_type"]),
            check_in=date.fromisoformat(data["check_in"]),
            check_out=date.fromisoformat(data["check_out"]),
            room_count=int(data["room_count"]),
        )


@dataclass(frozen=True, slots=True)
class HotelQuery:
    """A validated SearchHotels request."""

    city: str
    check_in: date
    check_out: date
    room_count: int

    @property
    def nights(self) -> int:
        return (self.check_out - self.check_in).days


@dataclass(frozen=True, slots=True)
class RoomOffer:
    room_type: RoomType
    available: int  # fewest rooms free on any night of the stay
    nightly_rate: Money  # one room, one night (the lowest rate of the stay)
    total: Money  # room_count rooms for the whole stay


@dataclass(frozen=True, slots=True)
class HotelOffer:
    hotel_id: str
    name: str
    city: str
    stars: int
    rooms: tuple[RoomOffer, ...]


class _Violations:
    """Collects every problem of a request so that the caller learns them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_any(self) -> None:
        if self.items:
            raise InvalidRequestError(self.items)


def _room_count(value: int, problems: _Violations) -> int:
    count = value or 1
    if not 1 <= count <= MAX_ROOMS:
        problems.add("room_count", f"must be between 1 and {MAX_ROOMS}, got {value}")
    return count


def _stay(check_in: date | None, check_out: date | None, problems: _Violations, *, in_catalogue: bool) -> None:
    """The stay's dates: real dates, check-out after check-in, at most MAX_NIGHTS (and in the catalogue)."""
    if check_in is None:
        problems.add("check_in", "must be a real calendar date (year, month and day)")
    if check_out is None:
        problems.add("check_out", "must be a real calendar date (year, month and day)")
    if check_in is None or check_out is None:
        return
    if check_out <= check_in:
        problems.add("check_out", f"must be after check_in ({check_in.isoformat()}), got {check_out.isoformat()}")
        return
    if (check_out - check_in).days > MAX_NIGHTS:
        problems.add("check_out", f"a stay is at most {MAX_NIGHTS} nights, got {(check_out - check_in).days}")
    if not in_catalogue:
        return
    if not CATALOGUE_START <= check_in <= LAST_NIGHT:
        problems.add(
            "check_in",
            f"must be between {CATALOGUE_START.isoformat()} and {LAST_NIGHT.isoformat()} (the nights on sale), "
            f"got {check_in.isoformat()}",
        )
    elif check_out > LAST_CHECK_OUT:
        problems.add(
            "check_out",
            f"must be on or before {LAST_CHECK_OUT.isoformat()} (the last night on sale is "
            f"{LAST_NIGHT.isoformat()}), got {check_out.isoformat()}",
        )


def new_booking(
    hotel_id: str, room_type: RoomType | None, check_in: date | None, check_out: date | None, room_count: int
) -> HotelBooking:
    """Validate a Reserve request (room_count 0 means 1); raise InvalidRequestError."""
    problems = _Violations()
    hotel = hotel_id.strip().lower()
    if not hotel:
        problems.add("hotel_id", "must not be empty; give a hotel id such as lis-alfama")
    elif len(hotel) > MAX_HOTEL_ID_LENGTH:
        problems.add("hotel_id", f"must be at most {MAX_HOTEL_ID_LENGTH} characters, such as lis-alfama")
    if room_type is None:
        problems.add("room_type", f"must be one of {ROOM_TYPE_CHOICES}")
    _stay(check_in, check_out, problems, in_catalogue=True)
    count = _room_count(room_count, problems)
    problems.raise_any()
    assert room_type is not None and check_in is not None and check_out is not None
    return HotelBooking(hotel, room_type, check_in, check_out, count)


def new_query(city: str, check_in: date | None, check_out: date | None, room_count: int) -> HotelQuery:
    """Validate a SearchHotels request (room_count 0 means 1); raise InvalidRequestError."""
    problems = _Violations()
    name = " ".join(city.split())
    if not name:
        problems.add("city", "must not be empty; give a city such as Lisbon")
    _stay(check_in, check_out, problems, in_catalogue=False)
    count = _room_count(room_count, problems)
    problems.raise_any()
    assert check_in is not None and check_out is not None
    return HotelQuery(name, check_in, check_out, count)


def unknown_city(city: str, known: Iterable[str]) -> InvalidRequestError:
    return InvalidRequestError.of("city", f"no hotels in {city!r}; cities with hotels: {', '.join(sorted(known))}")


def unknown_hotel(hotel_id: str) -> InvalidRequestError:
    return InvalidRequestError.of("hotel_id", f"no hotel {hotel_id!r} in the catalogue")


def price(nightly_rates_minor: Sequence[int], room_count: int) -> Money:
    """The nightly rates of one room summed over the stay, times the rooms."""
    return Money(sum(nightly_rates_minor) * room_count, CATALOGUE_CURRENCY)


def sold_out_message(booking: HotelBooking, night: date | None, available: int) -> str:
    when = f"the night of {night.isoformat()}" if night is not None else "some night of the stay"
    rooms = "room" if available == 1 else "rooms"
    return (
        f"{booking.hotel_id} has {available} {booking.room_type.value} {rooms} free on {when}; "
        f"{booking.room_count} requested"
    )
