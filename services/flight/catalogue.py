"""The flight catalogue, generated deterministically in code and loaded on a service's first start.

Twelve European airports, fourteen routes flown both ways every day of the 60-day window starting
2027-03-01. Flight numbers follow the route: route 100 (LHR-LIS) flies TM101 and TM103 out and TM102
and TM104 back; a flight's id is its number and date, "TM101-20270315". Every mainline aircraft has
150 economy, 24 premium economy and 12 business seats; the regional route ZRH-VIE (TM401/TM402) flies a
small jet with 8 business seats, so 9 passengers in business on it are always refused (SOLD_OUT).

Departure times are local; departure_at/arrival_at are stored in UTC using the EU summer-time rule
(last Sunday of March to last Sunday of October, 01:00 UTC), which every catalogue airport follows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from services.flight.domain import CATALOGUE_DAYS, CATALOGUE_START, Cabin
from services.flight.models import airports, flight_cabins, flights


@dataclass(frozen=True)
class Airport:
    code: str
    name: str
    city: str
    country: str
    standard_offset_hours: int  # winter time offset from UTC


@dataclass(frozen=True)
class Route:
    number: int  # outbound flights are number+1, number+3; return flights number+2, number+4
    origin: str
    destination: str
    distance_km: int
    outbound_times: tuple[str, ...]
    return_times: tuple[str, ...]
    regional: bool = False


AIRPORTS = (
    Airport("LHR", "London Heathrow", "London", "GB", 0),
    Airport("CDG", "Paris Charles de Gaulle", "Paris", "FR", 1),
    Airport("AMS", "Amsterdam Schiphol", "Amsterdam", "NL", 1),
    Airport("FRA", "Frankfurt am Main", "Frankfurt", "DE", 1),
    Airport("MAD", "Madrid-Barajas", "Madrid", "ES", 1),
    Airport("BCN", "Barcelona-El Prat", "Barcelona", "ES", 1),
    Airport("FCO", "Rome Fiumicino", "Rome", "IT", 1),
    Airport("LIS", "Lisbon Humberto Delgado", "Lisbon", "PT", 0),
    Airport("DUB", "Dublin", "Dublin", "IE", 0),
    Airport("CPH", "Copenhagen Kastrup", "Copenhagen", "DK", 1),
    Airport("VIE", "Vienna International", "Vienna", "AT", 1),
    Airport("ZRH", "Zurich", "Zurich", "CH", 1),
)

ROUTES = (
    Route(100, "LHR", "LIS", 1565, ("08:05", "17:30"), ("12:40", "21:55")),
    Route(110, "LHR", "CDG", 345, ("07:10", "18:45"), ("09:35", "21:05")),
    Route(120, "LHR", "AMS", 370, ("07:40",), ("10:20",)),
    Route(130, "LHR", "DUB", 450, ("09:15",), ("12:05",)),
    Route(140, "CDG", "FCO", 1105, ("08:30", "16:15"), ("11:50", "19:40")),
    Route(150, "CDG", "MAD", 1050, ("10:05",), ("13:45",)),
    Route(160, "AMS", "CPH", 630, ("08:50",), ("11:35",)),
    Route(170, "FRA", "VIE", 600, ("07:25", "17:05"), ("10:10", "19:50")),
    Route(180, "FRA", "BCN", 1090, ("11:20",), ("14:55",)),
    Route(190, "MAD", "BCN", 485, ("07:00", "19:30"), ("09:15", "21:40")),
    Route(200, "LIS", "MAD", 510, ("08:20",), ("11:00",)),
    Route(210, "AMS", "ZRH", 610, ("12:30",), ("15:15",)),
    Route(220, "CPH", "VIE", 870, ("09:40",), ("12:50",)),
    Route(400, "ZRH", "VIE", 590, ("07:50",), ("10:30",), regional=True),
)

MAINLINE_SEATS = {Cabin.ECONOMY: 150, Cabin.PREMIUM_ECONOMY: 24, Cabin.BUSINESS: 12}
REGIONAL_SEATS = {Cabin.ECONOMY: 60, Cabin.PREMIUM_ECONOMY: 12, Cabin.BUSINESS: 8}
# A cabin's fare is the economy fare times numerator / denominator, rounded down to whole euros.
CABIN_FACTORS = {Cabin.ECONOMY: (1, 1), Cabin.PREMIUM_ECONOMY: (9, 5), Cabin.BUSINESS: (7, 2)}

_OFFSETS = {a.code: a.standard_offset_hours for a in AIRPORTS}


def economy_fare_minor(distance_km: int) -> int:
    return 2900 + 7 * distance_km


def fare_minor(distance_km: int, cabin: Cabin) -> int:
    numerator, denominator = CABIN_FACTORS[cabin]
    return economy_fare_minor(distance_km) * numerator // denominator // 100 * 100


def duration_minutes(distance_km: int) -> int:
    return 40 + distance_km // 13


def _last_sunday(year: int, month: int) -> date:
    day = date(year, month + 1, 1) - timedelta(days=1)
    return day - timedelta(days=(day.weekday() - 6) % 7)


def to_utc(day: date, hhmm: str, standard_offset_hours: int) -> datetime:
    """A local departure time as UTC, under the EU summer-time rule."""
    utc = datetime.combine(day, time.fromisoformat(hhmm), tzinfo=UTC) - timedelta(hours=standard_offset_hours)
    summer_start = datetime.combine(_last_sunday(day.year, 3), time(1), tzinfo=UTC)
    summer_end = datetime.combine(_last_sunday(day.year, 10), time(1), tzinfo=UTC)
    return utc - timedelta(hours=1) if summer_start <= utc < summer_end else utc


def catalogue_days() -> Iterator[date]:
    for offset in range(CATALOGUE_DAYS):
        yield CATALOGUE_START + timedelta(days=offset)


def _flight_rows(day: date) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    for route in ROUTES:
        seats = REGIONAL_SEATS if route.regional else MAINLINE_SEATS
        minutes = duration_minutes(route.distance_km)
        directions = (
            (route.origin, route.destination, route.outbound_times, 1),
            (route.destination, route.origin, route.return_times, 2),
        )
        for origin, destination, times, first in directions:
            for index, hhmm in enumerate(times):
                number = f"TM{route.number + first + 2 * index}"
                flight_id = f"{number}-{day:%Y%m%d}"
                departure_at = to_utc(day, hhmm, _OFFSETS[origin])
                flight = {
                    "flight_id": flight_id,
                    "flight_number": number,
                    "origin": origin,
                    "destination": destination,
                    "departure_date": day,
                    "departure_time": hhmm,
                    "duration_minutes": minutes,
                    "departure_at": departure_at,
                    "arrival_at": departure_at + timedelta(minutes=minutes),
                }
                cabins = [
                    {
                        "flight_id": flight_id,
                        "cabin": cabin.value,
                        "capacity": capacity,
                        "held": 0,
                        "confirmed": 0,
                        "fare_minor": fare_minor(route.distance_km, cabin),
                    }
                    for cabin, capacity in seats.items()
                ]
                yield flight, cabins


def seed_catalogue(conn: Connection) -> None:
    """Load the catalogue into an empty database; a database that has airports already is left alone."""
    if (conn.execute(select(airports.c.code).limit(1))).first() is not None:
        return
    conn.execute(
        insert(airports),
        [{"code": a.code, "name": a.name, "city": a.city, "country": a.country} for a in AIRPORTS],
    )
    flight_rows: list[dict[str, Any]] = []
    cabin_rows: list[dict[str, Any]] = []
    for day in catalogue_days():
        for flight, cabins in _flight_rows(day):
            flight_rows.append(flight)
            cabin_rows.extend(cabins)
    conn.execute(insert(flights), flight_rows)
    conn.execute(insert(flight_cabins), cabin_rows)
