"""The hotel service's conservation rule (I5), read from its own database: room-nights add up.

Shared by the product audit (coordinator/audit.py, `tripmesh audit`) and the contract tests
(tests/support/cases/hotel.py), so both judge a database by one piece of logic.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.hotel.models import reservations, room_nights


async def check_conservation(engine: AsyncEngine) -> list[str]:
    """Every room-night: 0 <= held, 0 <= confirmed, held + confirmed <= capacity, and both equal to the
    rooms of the HELD / CONFIRMED reservations recomputed from the reservations table. Empty when all
    is well."""
    async with engine.connect() as conn:
        nights = (await conn.execute(select(room_nights))).all()
        rows = await conn.execute(
            select(reservations.c.reservation_id, reservations.c.status, reservations.c.details).where(
                reservations.c.status.in_(["HELD", "CONFIRMED"])
            )
        )
        booked = rows.all()
    expected: dict[str, Counter[tuple[str, str, date]]] = {"HELD": Counter(), "CONFIRMED": Counter()}
    problems: list[str] = []
    known = {(n.hotel_id, n.room_type, n.night) for n in nights}
    for reservation in booked:
        details: dict[str, Any] = reservation.details
        night = date.fromisoformat(details["check_in"])
        check_out = date.fromisoformat(details["check_out"])
        while night < check_out:
            key = (details["hotel_id"], details["room_type"], night)
            if key not in known:
                problems.append(f"{reservation.reservation_id} holds rooms on unknown room-night {_name(key)}")
            expected[reservation.status][key] += int(details["room_count"])
            night += timedelta(days=1)
    for n in nights:
        key = (n.hotel_id, n.room_type, n.night)
        where = _name(key)
        if n.held < 0 or n.confirmed < 0 or n.held + n.confirmed > n.capacity:
            problems.append(f"{where}: held {n.held} + confirmed {n.confirmed} outside 0..{n.capacity}")
        held, confirmed = expected["HELD"][key], expected["CONFIRMED"][key]
        if n.held != held:
            problems.append(f"{where}: held {n.held} but HELD reservations hold {held}")
        if n.confirmed != confirmed:
            problems.append(f"{where}: confirmed {n.confirmed} but CONFIRMED reservations hold {confirmed}")
    return problems


def _name(key: tuple[str, str, date]) -> str:
    """('lis-alfama', 'SUITE', date(2027, 3, 15)) -> 'lis-alfama SUITE night of 2027-03-15'."""
    hotel_id, room_type, night = key
    return f"{hotel_id} {room_type} night of {night.isoformat()}"
