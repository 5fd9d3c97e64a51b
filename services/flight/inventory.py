"""The seat inventory: flight's ParticipantDomain and catalogue queries; every SQL statement on its tables.

Seats move only by one conditional UPDATE per flight and cabin, so concurrent holds can never oversell
(P6) on SQLite or PostgreSQL: `held + n` is written only where `capacity - held - confirmed >= n`
still holds when the row is locked. Segments are updated in flight-id order so that two round trips
over the same pair of flights lock them in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from services.flight.domain import (
    Cabin,
    CabinOffer,
    FlightBooking,
    FlightOffer,
    FlightQuery,
    Leg,
    check_return,
    price,
    sold_out_message,
    unknown_airports,
    unknown_flight,
)
from services.flight.models import airports, flight_cabins, flights, seat_assignments
from services.flight.seats import assign, not_in_cabin
from services.kit.db import db_retry
from services.kit.errors import SeatTakenError, SoldOutError
from services.kit.money import CATALOGUE_CURRENCY, Money
from services.participant.states import Record, Status

CABIN_ORDER = {cabin: index for index, cabin in enumerate(Cabin)}
_OFFER_COLUMNS = (
    flights.c.flight_id,
    flights.c.flight_number,
    flights.c.origin,
    flights.c.destination,
    flights.c.departure_date,
    flights.c.departure_time,
    flights.c.duration_minutes,
    flight_cabins.c.cabin,
    flight_cabins.c.capacity,
    flight_cabins.c.held,
    flight_cabins.c.confirmed,
    flight_cabins.c.fare_minor,
)


# The hot statements, built once (bind parameters b_*): no expression building or cache keys per call.
_fc = flight_cabins.c
_ROW = and_(_fc.flight_id == bindparam("b_flight"), _fc.cabin == bindparam("b_cabin"))
_LEGS = select(
    flights.c.flight_id, flights.c.origin, flights.c.destination, flights.c.departure_at, flights.c.arrival_at
).where(flights.c.flight_id.in_(bindparam("b_ids", expanding=True)))
_TAKE = (
    update(flight_cabins)
    .where(_ROW, _fc.capacity - _fc.held - _fc.confirmed >= bindparam("b_n"))
    .values(held=_fc.held + bindparam("b_n"))
    .returning(_fc.fare_minor, _fc.capacity)
)
_sa = seat_assignments.c
_TAKEN = select(_sa.seat).where(_sa.flight_id == bindparam("b_flight"))
_SEAT = insert(seat_assignments)
_FREE_SEATS = delete(seat_assignments).where(_sa.reservation_id == bindparam("b_id"))
_SEATS_OF = (
    select(_sa.flight_id, _sa.seat).where(_sa.reservation_id == bindparam("b_id")).order_by(_sa.flight_id, _sa.seat)
)
_LEFT = select(_fc.capacity - _fc.held - _fc.confirmed).where(_ROW)
_CONFIRM = (
    update(flight_cabins)
    .where(_ROW, _fc.held >= bindparam("b_n"))
    .values(held=_fc.held - bindparam("b_n"), confirmed=_fc.confirmed + bindparam("b_n"))
    .returning(_fc.flight_id)
)
_RELEASE = {
    column.name: update(flight_cabins)
    .where(_ROW, column >= bindparam("b_n"))
    .values({column: column - bindparam("b_n")})
    .returning(_fc.flight_id)
    for column in (_fc.held, _fc.confirmed)
}


class InventoryMismatchError(RuntimeError):
    """A reservation's seats are not where its status says they are: a bug, never a caller's fault."""


class FlightInventory:
    name = "flight"

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def to_json(self, details: FlightBooking) -> dict[str, Any]:
        return details.to_json()

    def hold(self, conn: Connection, details: FlightBooking, reservation_id: str) -> Money:
        legs = self._legs(conn, details.flight_ids)
        outbound = legs.get(details.outbound_flight_id)
        if outbound is None:
            raise unknown_flight("outbound_flight_id", details.outbound_flight_id)
        if details.return_flight_id is not None:
            back = legs.get(details.return_flight_id)
            if back is None:
                raise unknown_flight("return_flight_id", details.return_flight_id)
            check_return(outbound, back)
        fares = []
        for flight_id in sorted(details.flight_ids):
            fare, capacity = self._take(conn, flight_id, details)
            self._seat(conn, flight_id, capacity, details, reservation_id)
            fares.append(fare)
        return price(fares, details.passenger_count)

    def confirm(self, conn: Connection, record: Record) -> None:
        booking = FlightBooking.from_json(record.details)
        n = booking.passenger_count
        for flight_id in sorted(booking.flight_ids):
            result = conn.execute(_CONFIRM, _params(flight_id, booking.cabin, n))
            if result.first() is None:
                raise InventoryMismatchError(f"{record.reservation_id}: fewer than {n} seats held on {flight_id}")

    def release(self, conn: Connection, record: Record) -> None:
        booking = FlightBooking.from_json(record.details)
        n = booking.passenger_count
        column = flight_cabins.c.confirmed if record.status is Status.CONFIRMED else flight_cabins.c.held
        conn.execute(_FREE_SEATS, {"b_id": record.reservation_id})
        for flight_id in sorted(booking.flight_ids):
            result = conn.execute(_RELEASE[column.name], _params(flight_id, booking.cabin, n))
            if result.first() is None:
                raise InventoryMismatchError(
                    f"{record.reservation_id}: fewer than {n} seats {column.name} on {flight_id}"
                )

    async def search(self, query: FlightQuery) -> list[FlightOffer]:
        async def work() -> list[FlightOffer]:
            async with self.engine.connect() as conn:
                known = await conn.execute(
                    select(airports.c.code).where(airports.c.code.in_([query.origin, query.destination]))
                )
                unknown_airports(query, [row.code for row in known])
                rows = await conn.execute(
                    select(*_OFFER_COLUMNS)
                    .select_from(flights)
                    .join(flight_cabins, flight_cabins.c.flight_id == flights.c.flight_id)
                    .where(
                        flights.c.origin == query.origin,
                        flights.c.destination == query.destination,
                        flights.c.departure_date == query.departure_date,
                        flight_cabins.c.capacity - flight_cabins.c.held - flight_cabins.c.confirmed
                        >= query.passenger_count,
                    )
                    .order_by(flights.c.departure_at, flights.c.flight_id)
                )
                return _offers(rows.all())

        return await db_retry(work)

    def _legs(self, conn: Connection, flight_ids: Sequence[str]) -> dict[str, Leg]:
        rows = conn.execute(_LEGS, {"b_ids": list(flight_ids)})
        return {row.flight_id: Leg(*row) for row in rows}

    def facts(self, conn: Connection, record: Record) -> dict[str, list[str]]:
        """The seats a reservation holds, per flight (none once it is cancelled or expired)."""
        seats: dict[str, list[str]] = {}
        for flight_id, seat in conn.execute(_SEATS_OF, {"b_id": record.reservation_id}):
            seats.setdefault(flight_id, []).append(seat)
        return seats

    def _seat(self, conn: Connection, flight_id: str, capacity: int, booking: FlightBooking, rid: str) -> None:
        """Pick the booking's seats on one flight and write them, after its count was taken.

        The count's UPDATE holds the cabin's row lock, so seat choices on one flight are made one at a
        time and see each other's; the (flight_id, seat) key is the last guard all the same.
        """
        taken = set(conn.execute(_TAKEN, {"b_flight": flight_id}).scalars())
        if booking.seats:
            if (invalid := not_in_cabin(flight_id, booking.cabin, capacity, booking.seats)) is not None:
                raise invalid
            clash = [seat for seat in booking.seats if seat in taken]
            if clash:
                raise SeatTakenError(
                    f"seat {', '.join(clash)} on {flight_id} is taken; choose another or let us assign one",
                    metadata={"flight_id": flight_id, "seat": clash[0], "seats": ",".join(clash)},
                )
            chosen = list(booking.seats)
        else:
            found = assign(booking.cabin, capacity, taken, booking.passenger_count)
            if found is None:  # the count says there is room: seats and counts disagree
                raise InventoryMismatchError(f"{flight_id}: fewer free seats than the cabin's count says")
            chosen = found
        row = {"flight_id": flight_id, "cabin": booking.cabin.value, "reservation_id": rid}
        conn.execute(_SEAT, [{**row, "seat": seat} for seat in chosen])

    def _take(self, conn: Connection, flight_id: str, booking: FlightBooking) -> tuple[int, int]:
        """Hold the booking's seats on one flight in one conditional UPDATE; one seat's fare and the cabin's
        capacity."""
        params = _params(flight_id, booking.cabin, booking.passenger_count)
        taken = conn.execute(_TAKE, params).first()
        if taken is not None:
            return int(taken.fare_minor), int(taken.capacity)
        available = int(conn.execute(_LEFT, params).scalar_one_or_none() or 0)
        n = booking.passenger_count
        raise SoldOutError(
            sold_out_message(flight_id, booking.cabin, n, available),
            metadata={"flight_id": flight_id, "cabin": booking.cabin.value, "seats_available": str(available)},
        )


def _params(flight_id: str, cabin: Cabin, n: int) -> dict[str, Any]:
    return {"b_flight": flight_id, "b_cabin": cabin.value, "b_n": n}


def _offers(rows: Sequence[Any]) -> list[FlightOffer]:
    cabins: dict[str, list[CabinOffer]] = {}
    first: dict[str, Any] = {}
    for row in rows:
        first.setdefault(row.flight_id, row)
        cabins.setdefault(row.flight_id, []).append(
            CabinOffer(
                cabin=Cabin(row.cabin),
                capacity=row.capacity,
                available=row.capacity - row.held - row.confirmed,
                fare=Money(int(row.fare_minor), CATALOGUE_CURRENCY),
            )
        )
    return [
        FlightOffer(
            flight_id=flight_id,
            flight_number=row.flight_number,
            origin=row.origin,
            destination=row.destination,
            departure_date=row.departure_date,
            departure_time=row.departure_time,
            duration_minutes=row.duration_minutes,
            cabins=tuple(sorted(cabins[flight_id], key=lambda offer: CABIN_ORDER[offer.cabin])),
        )
        for flight_id, row in first.items()
    ]
