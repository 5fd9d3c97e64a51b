"""The flight service's conservation rule (I5), read from its own database: seats add up.

Shared by the product audit (coordinator/audit.py, `tripmesh audit`) and the contract tests
(tests/support/cases/flight.py), so both judge a database by one piece of logic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.flight.models import flight_cabins, reservations, seat_assignments


async def check_conservation(engine: AsyncEngine) -> list[str]:
    """Every cabin: 0 <= held, 0 <= confirmed, held + confirmed <= capacity, and both equal to the seats of
    the HELD / CONFIRMED reservations recomputed from the reservations table; and the seat assignments
    agree (see _seat_problems). Empty when all is well."""
    async with engine.connect() as conn:
        cabins = (await conn.execute(select(flight_cabins))).all()
        seats = (await conn.execute(select(seat_assignments))).all()
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
    problems.extend(_seat_problems(cabins, booked, seats))
    return problems


def _seat_problems(cabins: Sequence[Any], booked: Sequence[Any], seats: Sequence[Any]) -> list[str]:
    """Seats held or confirmed match the seat counts: per cabin, as many assigned seats as held +
    confirmed; per live reservation, passenger_count seats (its named ones, if any) on each of its flights
    in its cabin; no seat assigned to a reservation that holds nothing. A seat held twice cannot be
    written at all (the (flight_id, seat) key)."""
    problems: list[str] = []
    per_cabin = Counter((s.flight_id, s.cabin) for s in seats)
    for c in cabins:
        if per_cabin[(c.flight_id, c.cabin)] != c.held + c.confirmed:
            problems.append(
                f"{c.flight_id} {c.cabin}: {per_cabin[(c.flight_id, c.cabin)]} seats assigned but held + confirmed "
                f"is {c.held + c.confirmed}"
            )
    mine: dict[tuple[str, str], list[Any]] = {}
    for s in seats:
        mine.setdefault((s.reservation_id, s.flight_id), []).append(s)
    live = {r.reservation_id for r in booked}
    for reservation_id, _flight_id in mine:
        if reservation_id not in live:
            problems.append(f"seats assigned to {reservation_id}, which holds nothing")
    for r in booked:
        details: dict[str, Any] = r.details
        for flight_id in (details["outbound_flight_id"], details["return_flight_id"]):
            if flight_id is None:
                continue
            got = mine.get((r.reservation_id, flight_id), [])
            names = sorted(s.seat for s in got)
            party = int(details["passenger_count"])
            if len(got) != party or any(s.cabin != details["cabin"] for s in got):
                problems.append(f"{r.reservation_id} holds seats {names} on {flight_id} for {party} passengers")
            elif details.get("seats") and names != sorted(details["seats"]):
                problems.append(f"{r.reservation_id} asked for seats {details['seats']} on {flight_id}, holds {names}")
    return problems
