"""Notification tables: the reservations (a staged message lives in their details) and the outbox.

Confirm writes the outbox row in the same transaction as the reservation's move to CONFIRMED (a
transactional outbox): a confirmed message is durably queued, and the dispatcher sends it later.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, String, Table, Text

from services.kit.db import UTCDateTime, new_metadata
from services.participant.models import reservation_table

metadata = new_metadata()

reservations = reservation_table(metadata)

outbox = Table(
    "outbox",
    metadata,
    Column("reservation_id", String(128), primary_key=True),
    Column("recipient", String(254), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("body", Text, nullable=False),
    # PENDING, SENT or DISCARDED (see domain.DeliveryState).
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime(), nullable=True),
)
Index("ix_outbox_state_created_at", outbox.c.state, outbox.c.created_at)
