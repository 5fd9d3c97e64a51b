"""The fleet inventory: car's ParticipantDomain and its search; every SQL statement on its tables.

A hold is one conditional UPDATE over all the days of the rental: each day's row takes `held + 1`
only where `capacity - held - confirmed >= 1` still holds when the row is locked, so a car is never
hired out twice (P6). If fewer rows than days were updated, some day is full: SoldOutError is raised
and the store's transaction rolls back the days that were taken, so a hold is all days or none.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from services.car.domain import CarClass, CarOffer, CarQuery, CarRental, price, sold_out_message, unknown_city
from services.car.models import car_days, cities
from services.kit.db import db_retry
from services.kit.errors import SoldOutError
from services.kit.money import CATALOGUE_CURRENCY, Money
from services.participant.states import Record, Status

CLASS_ORDER = {car_class: index for index, car_class in enumerate(CarClass)}

# The hot statements, built once (bind parameters b_*): no expression building or cache keys per call.
_cd = car_days.c
_free = _cd.capacity - _cd.held - _cd.confirmed
_RENTAL = and_(
    _cd.city == bindparam("b_city"),
    _cd.car_class == bindparam("b_class"),
    _cd.day >= bindparam("b_from"),
    _cd.day < bindparam("b_to"),
)
_KNOWN = select(cities.c.city).where(cities.c.city == bindparam("b_city"))
_TAKE = update(car_days).where(_RENTAL, _free >= 1).values(held=_cd.held + 1).returning(_cd.day, _cd.rate_minor)
_CONFIRM = (
    update(car_days)
    .where(_RENTAL, _cd.held >= 1)
    .values(held=_cd.held - 1, confirmed=_cd.confirmed + 1)
    .returning(_cd.day)
)
_RELEASE = {
    column.name: update(car_days).where(_RENTAL, column >= 1).values({column: column - 1}).returning(_cd.day)
    for column in (_cd.held, _cd.confirmed)
}
_FREE_BY_DAY = select(_cd.day, _free.label("free")).where(_RENTAL).order_by(_cd.day)


class InventoryMismatchError(RuntimeError):
    """A rental's car-days are not where its status says they are: a bug, never a caller's fault."""


class CarInventory:
    name = "car"

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def to_json(self, details: CarRental) -> dict[str, Any]:
        return details.to_json()

    def hold(self, conn: Connection, details: CarRental, reservation_id: str) -> Money:
        params = _params(details)
        if conn.execute(_KNOWN, params).first() is None:
            known = conn.execute(select(cities.c.city)).scalars().all()
            raise unknown_city(details.city, known)
        taken = conn.execute(_TAKE, params).all()
        if len(taken) < details.days:
            self._sold_out(conn, details, {row.day for row in taken})
        return price([int(row.rate_minor) for row in taken])

    def confirm(self, conn: Connection, record: Record) -> None:
        rental = CarRental.from_json(record.details)
        if len(conn.execute(_CONFIRM, _params(rental)).all()) != rental.days:
            raise InventoryMismatchError(f"{record.reservation_id}: no car held on some day")

    def release(self, conn: Connection, record: Record) -> None:
        rental = CarRental.from_json(record.details)
        column = _cd.confirmed if record.status is Status.CONFIRMED else _cd.held
        if len(conn.execute(_RELEASE[column.name], _params(rental)).all()) != rental.days:
            raise InventoryMismatchError(f"{record.reservation_id}: no car {column.name} on some day")

    async def search(self, query: CarQuery) -> list[CarOffer]:
        """The classes with a car free on every day of the rental, in class order."""

        async def work() -> list[CarOffer]:
            async with self.engine.connect() as conn:
                known = (await conn.execute(select(cities.c.city))).scalars().all()
                if query.city not in known:
                    raise unknown_city(query.city, known)
                rows = await conn.execute(
                    select(
                        _cd.car_class,
                        func.min(_free).label("available"),
                        func.min(_cd.rate_minor).label("lowest_rate"),
                        func.sum(_cd.rate_minor).label("rental_rate"),
                    )
                    .where(_cd.city == query.city, _cd.day >= query.pick_up, _cd.day < query.drop_off)
                    .group_by(_cd.car_class)
                    .having(func.count() == query.days, func.min(_free) >= 1)
                )
                offers = [
                    CarOffer(
                        car_class=CarClass(row.car_class),
                        available=int(row.available),
                        daily_rate=Money(int(row.lowest_rate), CATALOGUE_CURRENCY),
                        total=Money(int(row.rental_rate), CATALOGUE_CURRENCY),
                    )
                    for row in rows
                ]
                return sorted(offers, key=lambda offer: CLASS_ORDER[offer.car_class])

        return await db_retry(work)

    def _sold_out(self, conn: Connection, rental: CarRental, taken: set[date]) -> None:
        """Raise SoldOutError naming the first day of the rental with no car free."""
        short = next((row for row in conn.execute(_FREE_BY_DAY, _params(rental)) if row.day not in taken), None)
        day = None if short is None else short.day
        raise SoldOutError(
            sold_out_message(rental, day),
            metadata={
                "city": rental.city,
                "car_class": rental.car_class.value,
                "day": "" if day is None else day.isoformat(),
            },
        )


def _params(rental: CarRental) -> dict[str, Any]:
    return {"b_city": rental.city, "b_class": rental.car_class.value, "b_from": rental.pick_up, "b_to": rental.drop_off}
