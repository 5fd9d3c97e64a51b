"""The room inventory: hotel's ParticipantDomain and catalogue queries; every SQL statement on its tables.

A hold is one conditional UPDATE over all the nights of the stay: each night's row takes `held + n`
only where `capacity - held - confirmed >= n` still holds when the row is locked, so rooms can never be
oversold (P6). If fewer rows than nights were updated, some night is full: SoldOutError is raised and
the store's transaction rolls back the nights that were taken, so a hold is all nights or none.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.hotel.domain import (
    HotelBooking,
    HotelOffer,
    HotelQuery,
    RoomOffer,
    RoomType,
    price,
    sold_out_message,
    unknown_city,
    unknown_hotel,
)
from services.hotel.models import hotels, room_nights
from services.kit.db import db_retry
from services.kit.errors import SoldOutError
from services.kit.money import CATALOGUE_CURRENCY, Money
from services.participant.states import Record, Status

ROOM_ORDER = {room_type: index for index, room_type in enumerate(RoomType)}

_free = room_nights.c.capacity - room_nights.c.held - room_nights.c.confirmed


# The hot statements, built once (bind parameters b_*): no expression building or cache keys per call.
_rn = room_nights.c
_STAY = and_(
    _rn.hotel_id == bindparam("b_hotel"),
    _rn.room_type == bindparam("b_room"),
    _rn.night >= bindparam("b_in"),
    _rn.night < bindparam("b_out"),
)
_KNOWN = select(hotels.c.hotel_id).where(hotels.c.hotel_id == bindparam("b_hotel"))
_TAKE = (
    update(room_nights)
    .where(_STAY, _free >= bindparam("b_n"))
    .values(held=_rn.held + bindparam("b_n"))
    .returning(_rn.night, _rn.rate_minor)
)
_CONFIRM = (
    update(room_nights)
    .where(_STAY, _rn.held >= bindparam("b_n"))
    .values(held=_rn.held - bindparam("b_n"), confirmed=_rn.confirmed + bindparam("b_n"))
    .returning(_rn.night)
)
_RELEASE = {
    column.name: update(room_nights)
    .where(_STAY, column >= bindparam("b_n"))
    .values({column: column - bindparam("b_n")})
    .returning(_rn.night)
    for column in (_rn.held, _rn.confirmed)
}


class InventoryMismatchError(RuntimeError):
    """A reservation's rooms are not where its status says they are: a bug, never a caller's fault."""


class HotelInventory:
    name = "hotel"

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def to_json(self, details: HotelBooking) -> dict[str, Any]:
        return details.to_json()

    def hold(self, conn: Connection, details: HotelBooking, reservation_id: str) -> Money:
        if conn.execute(_KNOWN, {"b_hotel": details.hotel_id}).first() is None:
            raise unknown_hotel(details.hotel_id)
        n = details.room_count
        result = conn.execute(_TAKE, _params(details))
        taken = result.all()
        if len(taken) < details.nights:
            self._sold_out(conn, details, {row.night for row in taken})
        return price([int(row.rate_minor) for row in taken], n)

    def confirm(self, conn: Connection, record: Record) -> None:
        booking = HotelBooking.from_json(record.details)
        n = booking.room_count
        result = conn.execute(_CONFIRM, _params(booking))
        if len(result.all()) != booking.nights:
            raise InventoryMismatchError(f"{record.reservation_id}: fewer than {n} rooms held on some night")

    def release(self, conn: Connection, record: Record) -> None:
        booking = HotelBooking.from_json(record.details)
        n = booking.room_count
        column = room_nights.c.confirmed if record.status is Status.CONFIRMED else room_nights.c.held
        result = conn.execute(_RELEASE[column.name], _params(booking))
        if len(result.all()) != booking.nights:
            raise InventoryMismatchError(f"{record.reservation_id}: fewer than {n} rooms {column.name} on some night")

    async def search(self, query: HotelQuery) -> list[HotelOffer]:
        async def work() -> list[HotelOffer]:
            async with self.engine.connect() as conn:
                found = await conn.execute(
                    select(hotels).where(func.lower(hotels.c.city) == query.city.lower()).order_by(hotels.c.hotel_id)
                )
                in_city = found.all()
                if not in_city:
                    cities = await conn.execute(select(hotels.c.city).distinct())
                    raise unknown_city(query.city, [row.city for row in cities])
                offers = await self._room_offers(conn, query, [row.hotel_id for row in in_city])
                return [
                    HotelOffer(row.hotel_id, row.name, row.city, row.stars, tuple(offers[row.hotel_id]))
                    for row in in_city
                    if offers.get(row.hotel_id)
                ]

        return await db_retry(work)

    async def _room_offers(
        self, conn: AsyncConnection, query: HotelQuery, hotel_ids: Sequence[str]
    ) -> dict[str, list[RoomOffer]]:
        """Room types free on every night of the stay, per hotel, in room-type order."""
        rows = await conn.execute(
            select(
                room_nights.c.hotel_id,
                room_nights.c.room_type,
                func.min(_free).label("available"),
                func.min(room_nights.c.rate_minor).label("lowest_rate"),
                func.sum(room_nights.c.rate_minor).label("stay_rate"),
            )
            .where(
                room_nights.c.hotel_id.in_(hotel_ids),
                room_nights.c.night >= query.check_in,
                room_nights.c.night < query.check_out,
            )
            .group_by(room_nights.c.hotel_id, room_nights.c.room_type)
            .having(func.count() == query.nights, func.min(_free) >= query.room_count)
        )
        offers: dict[str, list[RoomOffer]] = {}
        for row in rows:
            offers.setdefault(row.hotel_id, []).append(
                RoomOffer(
                    room_type=RoomType(row.room_type),
                    available=int(row.available),
                    nightly_rate=Money(int(row.lowest_rate), CATALOGUE_CURRENCY),
                    total=Money(int(row.stay_rate) * query.room_count, CATALOGUE_CURRENCY),
                )
            )
        for room_offers in offers.values():
            room_offers.sort(key=lambda offer: ROOM_ORDER[offer.room_type])
        return offers

    def _sold_out(self, conn: Connection, booking: HotelBooking, taken: set[date]) -> None:
        """Raise SoldOutError naming the first night of the stay that has too few rooms."""
        rows = conn.execute(
            select(room_nights.c.night, _free.label("free")).where(_stay(booking)).order_by(room_nights.c.night)
        )
        short = next((row for row in rows if row.night not in taken), None)
        night = None if short is None else short.night
        available = 0 if short is None else int(short.free)
        raise SoldOutError(
            sold_out_message(booking, night, available),
            metadata={
                "hotel_id": booking.hotel_id,
                "room_type": booking.room_type.value,
                "night": "" if night is None else night.isoformat(),
                "rooms_available": str(available),
            },
        )


def _params(booking: HotelBooking) -> dict[str, Any]:
    return {
        "b_hotel": booking.hotel_id,
        "b_room": booking.room_type.value,
        "b_in": booking.check_in,
        "b_out": booking.check_out,
        "b_n": booking.room_count,
    }


def _stay(booking: HotelBooking) -> ColumnElement[bool]:
    return and_(
        room_nights.c.hotel_id == booking.hotel_id,
        room_nights.c.room_type == booking.room_type.value,
        room_nights.c.night >= booking.check_in,
        room_nights.c.night < booking.check_out,
    )
