"""The flight service's conservation rule (I5), read from its own database: seats add up.

Shared by the product audit (coordinator/audit.py, `tripmesh audit`) and the contract tests
(tests/support/cases/flight.py), so both judge a database by one piece of logic.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.flight.models import flight_cabins, reservations


async def check_conservation(engine: AsyncEngine) -> list[str]:
    """Every cabin: 0 <= held, 0 <= confirmed, held + confirmed <= capacity, and both equal to the seats of
    the HELD / CONFIRMED reservations recomputed from the reservations table. Empty when all is well."""
    async with engine.connect() as conn:
        cabins = (await conn.execute(select(flight_cabins))).all()
        rows = await conn.execute(
            select(reservations.c.reservation_id, reservations.c.status, reservations.c.details).where(
                reservations.c.status.in_(["HELD", "CONFIRMED"])
            )
        )
        booked = rows.all()
    expected: dict[str, Counter[tuple[str, str]]] = {"HELD": Counter(), "CONFIRMED": Counter()}
    problems: list[str] = []
    known = {(c.flight_id, c.cabin) for c in cabins}
    for reservation in booked:
        details: dict[str, Any] = reservation.details
        for flight_id in (details["outbound_flight_id"], details["return_flight_id"]):
            if flight_id is None:
                continue
            key = (flight_id, details["cabin"])
            if key not in known:
                problems.append(f"{reservation.reservation_id} holds seats on unknown cabin {' '.join(key)}")
            expected[reservation.status][key] += int(details["passenger_count"])
    for c in cabins:
        key = (c.flight_id, c.cabin)
        where = f"{c.flight_id} {c.cabin}"
        if c.held < 0 or c.confirmed < 0 or c.held + c.confirmed > c.capacity:
            problems.append(f"{where}: held {c.held} + confirmed {c.confirmed} outside 0..{c.capacity}")
        held, confirmed = expected["HELD"][key], expected["CONFIRMED"][key]
        if c.held != held:
            problems.append(f"{where}: held {c.held} but HELD reservations hold {held}")
        if c.confirmed != confirmed:
            problems.append(f"{where}: confirmed {c.confirmed} but CONFIRMED reservations hold {confirmed}")
    return problems
