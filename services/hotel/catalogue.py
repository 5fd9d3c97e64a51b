"""The hotel catalogue, generated deterministically in code and loaded on a service's first start.

Eight hotels in seven of the flight network's cities (two in Lisbon: lis-alfama and lis-chiado), each
with 20 STANDARD, 8 DELUXE and 2 SUITE rooms on sale every night from 2027-03-01 to 2027-04-29, at a
rate that depends on the hotel's stars and the room type. Three SUITE rooms are therefore always
refused (SOLD_OUT).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from services.hotel.domain import CATALOGUE_DAYS, CATALOGUE_START, RoomType
from services.hotel.models import hotels, room_nights


@dataclass(frozen=True)
class Hotel:
    hotel_id: str
    name: str
    city: str
    stars: int


HOTELS = (
    Hotel("lis-alfama", "Casa Alfama", "Lisbon", 4),
    Hotel("lis-chiado", "Chiado Grand Hotel", "Lisbon", 5),
    Hotel("lon-southbank", "Southbank Lodge", "London", 4),
    Hotel("par-marais", "Hotel du Marais", "Paris", 3),
    Hotel("ams-jordaan", "Jordaan Canal House", "Amsterdam", 4),
    Hotel("bcn-gotic", "Gotic Rooms", "Barcelona", 3),
    Hotel("rom-trastevere", "Trastevere Inn", "Rome", 3),
    Hotel("vie-ringstrasse", "Ringstrasse Palace", "Vienna", 5),
)

ROOMS = {RoomType.STANDARD: 20, RoomType.DELUXE: 8, RoomType.SUITE: 2}

# One room for one night, in EUR minor units, by stars and room type.
RATES = {
    3: {RoomType.STANDARD: 8900, RoomType.DELUXE: 13900, RoomType.SUITE: 25900},
    4: {RoomType.STANDARD: 12900, RoomType.DELUXE: 18900, RoomType.SUITE: 34900},
    5: {RoomType.STANDARD: 18900, RoomType.DELUXE: 27900, RoomType.SUITE: 54900},
}


def catalogue_nights() -> Iterator[date]:
    for offset in range(CATALOGUE_DAYS):
        yield CATALOGUE_START + timedelta(days=offset)


def _room_night_rows() -> Iterator[dict[str, Any]]:
    for hotel in HOTELS:
        for room_type, capacity in ROOMS.items():
            for night in catalogue_nights():
                yield {
                    "hotel_id": hotel.hotel_id,
                    "room_type": room_type.value,
                    "night": night,
                    "capacity": capacity,
                    "held": 0,
                    "confirmed": 0,
                    "rate_minor": RATES[hotel.stars][room_type],
                }


def seed_catalogue(conn: Connection) -> None:
    """Load the catalogue into an empty database; a database that has hotels already is left alone."""
    if (conn.execute(select(hotels.c.hotel_id).limit(1))).first() is not None:
        return
    conn.execute(
        insert(hotels),
        [{"hotel_id": h.hotel_id, "name": h.name, "city": h.city, "stars": h.stars} for h in HOTELS],
    )
    conn.execute(insert(room_nights), list(_room_night_rows()))
