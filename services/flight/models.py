"""The flight service's own database: the reservation fence plus airports, flights and cabin counters.

Seats are counters, not rows: `flight_cabins` keeps capacity, held and confirmed per flight and cabin,
moved only by conditional UPDATEs, and the CHECK constraints restate the conservation rule (I5).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, Date, ForeignKey, Index, Integer, String, Table

from services.kit.db import UTCDateTime, new_metadata
from services.participant.models import reservation_table

metadata = new_metadata()

reservations = reservation_table(metadata)

airports = Table(
    "airports",
    metadata,
    Column("code", String(3), primary_key=True),
    Column("name", String(80), nullable=False),
    Column("city", String(80), nullable=False),
    Column("country", String(2), nullable=False),
)

flights = Table(
    "flights",
    metadata,
    Column("flight_id", String(32), primary_key=True),
    Column("flight_number", String(8), nullable=False),
    Column("origin", String(3), ForeignKey("airports.code"), nullable=False),
    Column("destination", String(3), ForeignKey("airports.code"), nullable=False),
    Column("departure_date", Date, nullable=False),
    Column("departure_time", String(5), nullable=False),  # local "HH:MM"
    Column("duration_minutes", Integer, nullable=False),
    Column("departure_at", UTCDateTime(), nullable=False),
    Column("arrival_at", UTCDateTime(), nullable=False),
)
Index("ix_flights_route_date", flights.c.origin, flights.c.destination, flights.c.departure_date)

flight_cabins = Table(
    "flight_cabins",
    metadata,
    Column("flight_id", String(32), ForeignKey("flights.flight_id"), primary_key=True),
    Column("cabin", String(16), primary_key=True),
    Column("capacity", Integer, nullable=False),
    Column("held", Integer, nullable=False, default=0),
    Column("confirmed", Integer, nullable=False, default=0),
    Column("fare_minor", BigInteger, nullable=False),
    CheckConstraint("held >= 0", name="held_not_negative"),
    CheckConstraint("confirmed >= 0", name="confirmed_not_negative"),
    CheckConstraint("held + confirmed <= capacity", name="within_capacity"),
)

# One row per seat held or confirmed, written in the transaction that moves flight_cabins' counters:
# the primary key (flight_id, seat) is what keeps two reservations from ever holding one seat.
seat_assignments = Table(
    "seat_assignments",
    metadata,
    Column("flight_id", String(32), ForeignKey("flights.flight_id"), primary_key=True),
    Column("seat", String(4), primary_key=True),  # "12A"
    Column("cabin", String(16), nullable=False),
    Column("reservation_id", String(128), nullable=False),
)
Index("ix_seat_assignments_reservation_id", seat_assignments.c.reservation_id)
