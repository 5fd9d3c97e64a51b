"""Invariants I1-I7 of ARCHITECTURE.md, checked by reading every database directly.

Nothing here trusts the coordinator's answers: trips come from its step log tables, reservations from
each participant's own `reservations` table, inventory and money from the participants' counters.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.cases import flight, hotel, notify, payment

CONSERVATION = {
    "flight": flight.CASE.check_conservation,
    "hotel": hotel.CASE.check_conservation,
    "payment": payment.CASE.check_conservation,
    "notify": notify.CASE.check_conservation,
}


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    status: str
    price_minor: int


async def _reservations(engine: AsyncEngine) -> dict[str, Reservation]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT reservation_id, status, price_minor FROM reservations"))
        return {r.reservation_id: Reservation(r.reservation_id, r.status, r.price_minor) for r in rows}


async def check_invariants(coordinator: AsyncEngine, participants: Mapping[str, AsyncEngine]) -> list[str]:
    """Every violation found, as sentences; empty when I1-I7 hold."""
    problems: list[str] = []
    async with coordinator.connect() as conn:
        trips = {r.trip_id: r for r in await conn.execute(text("SELECT trip_id, state, failure_reason FROM trips"))}
    held = {name: await _reservations(engine) for name, engine in participants.items()}

    # I1: every accepted trip ended, or waits for an operator with a reason.
    for trip in trips.values():
        if trip.state not in ("CONFIRMED", "CANCELLED", "NEEDS_ATTENTION"):
            problems.append(f"I1: trip {trip.trip_id} is still {trip.state}")
        if trip.state == "NEEDS_ATTENTION" and not trip.failure_reason:
            problems.append(f"I1: trip {trip.trip_id} needs attention without a reason")

    for trip in trips.values():
        parts = {name: rows.get(f"{trip.trip_id}/{name}") for name, rows in held.items()}
        if trip.state == "CONFIRMED":
            # I2: every reservation confirmed, the payment captured for exactly the total.
            for name in ("flight", "payment"):
                part = parts.get(name)
                if part is None or part.status != "CONFIRMED":
                    found = part.status if part else "missing"
                    problems.append(f"I2: confirmed trip {trip.trip_id} has {name} {found}")
            hotel_part = parts.get("hotel")
            if hotel_part is not None and hotel_part.status != "CONFIRMED":
                problems.append(f"I2: confirmed trip {trip.trip_id} has hotel {hotel_part.status}")
            total = sum(p.price_minor for n, p in parts.items() if p and n in ("flight", "hotel"))
            pay = parts.get("payment")
            if pay is not None and pay.price_minor != total:
                problems.append(f"I2: trip {trip.trip_id} captured {pay.price_minor}, its total is {total}")
        elif trip.state == "CANCELLED":
            # I3: nothing held or confirmed, no money kept.
            for name, part in parts.items():
                if part is not None and part.status in ("HELD", "CONFIRMED"):
                    problems.append(f"I3: cancelled trip {trip.trip_id} still has {name} {part.status}")

    # I4: nothing held that belongs to no live trip.
    for name, rows in held.items():
        for rid, part in rows.items():
            trip_id = rid.rsplit("/", 1)[0]
            trip = trips.get(trip_id)
            if part.status in ("HELD", "CONFIRMED") and trip is None:
                problems.append(f"I4: {name} {part.status} {rid} belongs to no trip")
            elif part.status == "HELD" and trip is not None and trip.state in ("CONFIRMED", "CANCELLED"):
                problems.append(f"I4: {name} still HELD {rid} for {trip.state} trip")

    # I5 (and each service's own conservation rules): inventory and credit counters add up.
    for name, engine in participants.items():
        problems.extend(f"I5 {name}: {p}" for p in await CONSERVATION[name](engine))

    # I6: every captured amount is a confirmed trip's total.
    captured: dict[str, int] = defaultdict(int)
    for rid, part in held.get("payment", {}).items():
        if part.status == "CONFIRMED":
            captured[rid.rsplit("/", 1)[0]] += part.price_minor
    for trip_id in captured:
        state = trips[trip_id].state if trip_id in trips else "missing"
        if state != "CONFIRMED":
            problems.append(f"I6: money captured for trip {trip_id} which is {state}")
    return problems
