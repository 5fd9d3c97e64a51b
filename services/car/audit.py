"""The car service's conservation rule (I5), read from its own database: car-days add up.

Shared by the product audit (coordinator/audit.py, `tripmesh audit`) and the contract tests
(tests/support/cases/car.py), so both judge a database by one piece of logic.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.car.models import car_days, reservations

Key = tuple[str, str, date]


async def check_conservation(engine: AsyncEngine) -> list[str]:
    """Every car-day: 0 <= held, 0 <= confirmed, held + confirmed <= capacity, and both equal to the cars
    of the HELD / CONFIRMED rentals recomputed from the reservations table. Empty when all is well."""
    async with engine.connect() as conn:
        days = (await conn.execute(select(car_days))).all()
        rows = await conn.execute(
            select(reservations.c.reservation_id, reservations.c.status, reservations.c.details).where(
                reservations.c.status.in_(["HELD", "CONFIRMED"])
            )
        )
        booked = rows.all()
    expected: dict[str, Counter[Key]] = {"HELD": Counter(), "CONFIRMED": Counter()}
    problems: list[str] = []
    known = {(d.city, d.car_class, d.day) for d in days}
    for rental in booked:
        details: dict[str, Any] = rental.details
        day = date.fromisoformat(details["pick_up"])
        while day < date.fromisoformat(details["drop_off"]):
            key = (details["city"], details["car_class"], day)
            if key not in known:
                problems.append(f"{rental.reservation_id} holds a car on unknown car-day {_name(key)}")
            expected[rental.status][key] += 1
            day += timedelta(days=1)
    for d in days:
        key = (d.city, d.car_class, d.day)
        if d.held < 0 or d.confirmed < 0 or d.held + d.confirmed > d.capacity:
            problems.append(f"{_name(key)}: held {d.held} + confirmed {d.confirmed} outside 0..{d.capacity}")
        held, confirmed = expected["HELD"][key], expected["CONFIRMED"][key]
        if d.held != held:
            problems.append(f"{_name(key)}: held {d.held} but HELD rentals hold {held}")
        if d.confirmed != confirmed:
            problems.append(f"{_name(key)}: confirmed {d.confirmed} but CONFIRMED rentals hold {confirmed}")
    return problems


def _name(key: Key) -> str:
    """('Lisbon', 'SUV', date(2027, 3, 15)) -> 'Lisbon SUV on 2027-03-15'."""
    city, car_class, day = key
    return f"{city} {car_class} on {day.isoformat()}"
