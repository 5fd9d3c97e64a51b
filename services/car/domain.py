"""The car rental domain, pure: what a rental is, how requests are validated and priced. No I/O.

A rental holds one car of a class in a city for every day from the pick-up date up to (not
including) the drop-off date: a car picked up on the 15th and dropped off on the 18th is charged, and
held, for three days. The fleet has a count and a daily rate for every day from 2027-03-01 to
2027-04-29, so a car may be dropped off on 2027-04-30 at the latest. Checks that need the catalogue
(does the city have cars?) run in the inventory, inside the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from typing import Any

from services.kit.errors import FieldViolation, InvalidRequestError
from services.kit.money import CATALOGUE_CURRENCY, Money

CATALOGUE_START = date(2027, 3, 1)  # the first day on hire
CATALOGUE_DAYS = 60
LAST_DAY = CATALOGUE_START + timedelta(days=CATALOGUE_DAYS - 1)  # 2027-04-29
LAST_DROP_OFF = LAST_DAY + timedelta(days=1)  # 2027-04-30

MAX_DAYS = 30
MAX_CITY_LENGTH = 80


class CarClass(StrEnum):
    ECONOMY = "ECONOMY"
    COMPACT = "COMPACT"
    MIDSIZE = "MIDSIZE"
    SUV = "SUV"
    LUXURY = "LUXURY"


CAR_CLASS_CHOICES = ", ".join(c.value for c in CarClass)


@dataclass(frozen=True, slots=True)
class CarRental:
    """The details of one car reservation, as stored with it (enough to release it)."""

    city: str
    car_class: CarClass
    pick_up: date
    drop_off: date

    @property
    def days(self) -> int:
        return (self.drop_off - self.pick_up).days

    def to_json(self) -> dict[str, Any]:
        return {
            "city": self.city,
            "car_class": self.car_class.value,
            "pick_up": self.pick_up.isoformat(),
            "drop_off": self.drop_off.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CarRental:
        return cls(
            city=str(data["city"]),
            car_class=CarClass(data["car_class"]),
            pick_up=date.fromisoformat(data["pick_up"]),
            drop_off=date.fromisoformat(data["drop_off"]),
        )


@dataclass(frozen=True, slots=True)
class CarQuery:
    """A validated SearchCars request."""

    city: str
    pick_up: date
    drop_off: date

    @property
    def days(self) -> int:
        return (self.drop_off - self.pick_up).days


@dataclass(frozen=True, slots=True)
class CarOffer:
    car_class: CarClass
    available: int  # fewest cars free on any day of the rental
    daily_rate: Money  # the lowest daily rate of the rental
    total: Money  # the whole rental


def city_name(raw: str) -> str:
    """'  lisbon ' -> 'Lisbon': the catalogue's spelling, so that one city is one fingerprint (P1)."""
    return " ".join(raw.split()).title()


def _dates(pick_up: date | None, drop_off: date | None, problems: list[FieldViolation], *, in_catalogue: bool) -> None:
    """The rental's dates: real dates, drop-off after pick-up, at most MAX_DAYS (and on sale)."""
    for field, value in (("pick_up_date", pick_up), ("drop_off_date", drop_off)):
        if value is None:
            problems.append(FieldViolation(field, "must be a real calendar date (year, month and day)"))
    if pick_up is None or drop_off is None:
        return
    if drop_off <= pick_up:
        problems.append(
            FieldViolation("drop_off_date", f"must be after pick_up_date ({pick_up.isoformat()}), got {drop_off}")
        )
        return
    if (drop_off - pick_up).days > MAX_DAYS:
        days = (drop_off - pick_up).days
        problems.append(FieldViolation("drop_off_date", f"a rental is at most {MAX_DAYS} days, got {days}"))
    if not in_catalogue:
        return
    if not CATALOGUE_START <= pick_up <= LAST_DAY:
        problems.append(
            FieldViolation(
                "pick_up_date",
                f"must be between {CATALOGUE_START.isoformat()} and {LAST_DAY.isoformat()} (the days on hire), "
                f"got {pick_up.isoformat()}",
            )
        )
    elif drop_off > LAST_DROP_OFF:
        problems.append(
            FieldViolation(
                "drop_off_date",
                f"must be on or before {LAST_DROP_OFF.isoformat()} (the last day on hire is {LAST_DAY.isoformat()}), "
                f"got {drop_off.isoformat()}",
            )
        )


def _city(raw: str, problems: list[FieldViolation]) -> str:
    name = city_name(raw)
    if not name:
        problems.append(FieldViolation("city", "must not be empty; give a city such as Lisbon"))
    elif len(name) > MAX_CITY_LENGTH:
        problems.append(FieldViolation("city", f"must be at most {MAX_CITY_LENGTH} characters, such as Lisbon"))
    return name


def new_rental(city: str, car_class: CarClass | None, pick_up: date | None, drop_off: date | None) -> CarRental:
    """Validate a Reserve request; raise InvalidRequestError naming every bad field."""
    problems: list[FieldViolation] = []
    name = _city(city, problems)
    if car_class is None:
        problems.append(FieldViolation("car_class", f"must be one of {CAR_CLASS_CHOICES}"))
    _dates(pick_up, drop_off, problems, in_catalogue=True)
    if problems:
        raise InvalidRequestError(problems)
    assert car_class is not None and pick_up is not None and drop_off is not None
    return CarRental(name, car_class, pick_up, drop_off)


def new_query(city: str, pick_up: date | None, drop_off: date | None) -> CarQuery:
    """Validate a SearchCars request; raise InvalidRequestError naming every bad field."""
    problems: list[FieldViolation] = []
    name = _city(city, problems)
    _dates(pick_up, drop_off, problems, in_catalogue=False)
    if problems:
        raise InvalidRequestError(problems)
    assert pick_up is not None and drop_off is not None
    return CarQuery(name, pick_up, drop_off)


def unknown_city(city: str, known: Iterable[str]) -> InvalidRequestError:
    return InvalidRequestError.of("city", f"no cars in {city!r}; cities with cars: {', '.join(sorted(known))}")


def price(daily_rates_minor: Sequence[int]) -> Money:
    """The daily rates summed over the rental."""
    return Money(sum(daily_rates_minor), CATALOGUE_CURRENCY)


def sold_out_message(rental: CarRental, day: date | None) -> str:
    when = f"on {day.isoformat()}" if day is not None else "on some day of the rental"
    return f"no {rental.car_class.value} car is free in {rental.city} {when}"
