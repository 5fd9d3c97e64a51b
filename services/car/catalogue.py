"""The car fleet, generated deterministically in code and loaded on a service's first start.

The seven cities of the hotel catalogue (services/hotel/catalogue.py), each served by the flight
network: Lisbon, London, Paris, Amsterdam, Barcelona, Rome and Vienna. Every city has 10 ECONOMY,
8 COMPACT, 6 MIDSIZE, 4 SUV and 2 LUXURY cars for hire every day from 2027-03-01 to 2027-04-29, at a
daily rate by class; but Vienna's fleet has no LUXURY car, so one is always refused there (SOLD_OUT),
as is a third LUXURY car in any other city on one day.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from services.car.domain import CATALOGUE_DAYS, CATALOGUE_START, CarClass
from services.car.models import car_days, cities

CITIES = (
    ("Lisbon", "PT"),
    ("London", "GB"),
    ("Paris", "FR"),
    ("Amsterdam", "NL"),
    ("Barcelona", "ES"),
    ("Rome", "IT"),
    ("Vienna", "AT"),
)

FLEET = {CarClass.ECONOMY: 10, CarClass.COMPACT: 8, CarClass.MIDSIZE: 6, CarClass.SUV: 4, CarClass.LUXURY: 2}
FLEET_BY_CITY = {"Vienna": {**FLEET, CarClass.LUXURY: 0}}

# One car for one day, in EUR minor units.
DAILY_RATES = {
    CarClass.ECONOMY: 3900,
    CarClass.COMPACT: 4900,
    CarClass.MIDSIZE: 6400,
    CarClass.SUV: 8900,
    CarClass.LUXURY: 16900,
}


def catalogue_days() -> Iterator[date]:
    for offset in range(CATALOGUE_DAYS):
        yield CATALOGUE_START + timedelta(days=offset)


def _car_day_rows() -> Iterator[dict[str, Any]]:
    for city, _country in CITIES:
        for car_class, capacity in FLEET_BY_CITY.get(city, FLEET).items():
            for day in catalogue_days():
                yield {
                    "city": city,
                    "car_class": car_class.value,
                    "day": day,
                    "capacity": capacity,
                    "held": 0,
                    "confirmed": 0,
                    "rate_minor": DAILY_RATES[car_class],
                }


def seed_catalogue(conn: Connection) -> None:
    """Load the fleet into an empty database; a database that has cities already is left alone."""
    if conn.execute(select(cities.c.city).limit(1)).first() is not None:
        return
    conn.execute(insert(cities), [{"city": city, "country": country} for city, country in CITIES])
    conn.execute(insert(car_days), list(_car_day_rows()))
