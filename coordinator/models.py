"""The step log's tables: one row per trip, one row per (trip, step), one row per lease grant.

A trip's row carries its lease (coordinator/lease.py): the replica that drives it (`owner`), until when
(`lease_expires_at`, NULL once the trip is terminal: nobody needs to drive it), and the fencing token
(`fence`) that every step-log write for the trip must carry. Each step row records the token and
replica it was last written under, and `trip_leases` keeps every grant of every token, so the audit
can check I8 from the database alone.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, CheckConstraint, Column, ForeignKey, Index, Integer, String, Table, Text

from coordinator.trip import StepStatus, TripState
from services.kit.db import UTCDateTime, new_metadata
from services.participant.models import one_of

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
    Column("owner", String(128), nullable=False, default=""),
    Column("fence", BigInteger, nullable=False, default=0),
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    # Changes and cancellations of the booked trip (coordinator/trip.py Operation), oldest first; NULL: none.
    Column("operations", JSON, nullable=True),
    CheckConstraint(one_of("state", TripState), name="state_known"),
)
Index("ix_trips_state_created_at", trips.c.state, trips.c.created_at)
Index("ix_trips_customer_id_created_at", trips.c.customer_id, trips.c.created_at)
Index("ix_trips_created_at", trips.c.created_at)
# The takeover scan reads only trips with a lease (non-terminal ones), soonest expired first.
Index("ix_trips_lease_expires_at", trips.c.lease_expires_at)

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
    Column("fence", BigInteger, nullable=False, default=0),  # the token the last write of this row carried
    Column("owner", String(128), nullable=False, default=""),  # the replica that wrote it
    CheckConstraint(one_of("status", StepStatus), name="status_known"),
)

trip_leases = Table(
    "trip_leases",
    metadata,
    Column("trip_id", String(64), ForeignKey("trips.trip_id"), primary_key=True),
    Column("fence", BigInteger, primary_key=True),  # one owner per token, by the key
    Column("owner", String(128), nullable=False),
    Column("acquired_at", UTCDateTime(), nullable=False),
    Column("reason", String(16), nullable=False),  # new, takeover, retry
)

__all__ = ["metadata", "steps", "trip_leases", "trips"]
