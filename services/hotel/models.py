"""The hotel service's own database: the reservation fence plus hotels and room-night counters.

Rooms are counters, not rows: `room_nights` keeps capacity, held, confirmed and the rate per hotel,
room type and night, moved only by conditional UPDATEs; the CHECK constraints restate conservation (I5).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, Date, ForeignKey, Index, Integer, String, Table

from services.kit.db import new_metadata
from services.participant.models import reservation_table

metadata = new_metadata()

reservations = reservation_table(metadata)

hotels = Table(
    "hotels",
    metadata,
    Column("hotel_id", String(64), primary_key=True),
    Column("name", String(120), nullable=False),
    Column("city", String(80), nullable=False),
    Column("stars", Integer, nullable=False),
)
Index("ix_hotels_city", hotels.c.city)

room_nights = Table(
    "room_nights",
    metadata,
    Column("hotel_id", String(64), ForeignKey("hotels.hotel_id"), primary_key=True),
    Column("room_type", String(16), primary_key=True),
    Column("night", Date, primary_key=True),
    Column("capacity", Integer, nullable=False),
    Column("held", Integer, nullable=False, default=0),
    Column("confirmed", Integer, nullable=False, default=0),
    Column("rate_minor", BigInteger, nullable=False),
    CheckConstraint("held >= 0", name="held_not_negative"),
    CheckConstraint("confirmed >= 0", name="confirmed_not_negative"),
    CheckConstraint("held + confirmed <= capacity", name="within_capacity"),
)
