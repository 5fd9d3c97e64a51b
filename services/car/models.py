"""The car service's own database: the reservation fence plus the fleet as per-day counters.

Cars are counters, not rows: `car_days` keeps capacity, held, confirmed and the daily rate per city,
car class and day, moved only by conditional UPDATEs; the CHECK constraints restate conservation (I5).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, Date, ForeignKey, Integer, String, Table

from services.kit.db import new_metadata
from services.participant.models import reservation_table

metadata = new_metadata()

reservations = reservation_table(metadata)

cities = Table(
    "cities",
    metadata,
    Column("city", String(80), primary_key=True),  # the catalogue's spelling: "Lisbon"
    Column("country", String(2), nullable=False),
)

car_days = Table(
    "car_days",
    metadata,
    Column("city", String(80), ForeignKey("cities.city"), primary_key=True),
    Column("car_class", String(16), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("capacity", Integer, nullable=False),
    Column("held", Integer, nullable=False, default=0),
    Column("confirmed", Integer, nullable=False, default=0),
    Column("rate_minor", BigInteger, nullable=False),
    CheckConstraint("held >= 0", name="held_not_negative"),
    CheckConstraint("confirmed >= 0", name="confirmed_not_negative"),
    CheckConstraint("held + confirmed <= capacity", name="within_capacity"),
)
