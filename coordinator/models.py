"""The step log's tables: one row per trip, one row per (trip, step)."""

from __future__ import annotations

from sqlalchemy import JSON, Column, ForeignKey, Index, Integer, String, Table, Text

from services.kit.db import UTCDateTime, new_metadata

metadata = new_metadata()

trips = Table(
    "trips",
    metadata,
    Column("trip_id", String(64), primary_key=True),
    Column("state", String(24), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("request", JSON, nullable=False),
    Column("customer_id", String(128), nullable=False),
    Column("definition_version", Integer, nullable=False),
    Column("failure_reason", Text, nullable=False, default=""),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("deadline_at", UTCDateTime(), nullable=False),
)
Index("ix_trips_state_created_at", trips.c.state, trips.c.created_at)
Index("ix_trips_customer_id_created_at", trips.c.customer_id, trips.c.created_at)
Index("ix_trips_created_at", trips.c.created_at)

steps = Table(
    "steps",
    metadata,
    Column("trip_id", String(64), ForeignKey("trips.trip_id"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("error_code", String(32), nullable=False, default=""),
    Column("error_reason", String(64), nullable=False, default=""),
    Column("error_message", Text, nullable=False, default=""),
    Column("result", JSON, nullable=False),
)

__all__ = ["metadata", "steps", "trips"]
