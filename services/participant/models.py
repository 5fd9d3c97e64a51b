"""The reservation row every participant keeps: it is also the idempotency fence (Seata's tcc_fence_log).

The primary key on reservation_id is the guard: a second Reserve with the same id can never create a
second hold, and a tombstone row (status CANCELLED, tombstone true) makes a late Reserve fail (P4).
A service declares its table with `reservation_table(metadata)` next to its own domain tables.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import JSON, BigInteger, Boolean, CheckConstraint, Column, Index, MetaData, String, Table

from services.kit.db import UTCDateTime
from services.participant.states import Status


def reservation_table(metadata: MetaData) -> Table:
    table = Table(
        "reservations",
        metadata,
        Column("reservation_id", String(128), primary_key=True),
        Column("status", String(16), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("details", JSON, nullable=False),
        Column("price_minor", BigInteger, nullable=False),
        Column("currency", String(3), nullable=False),
        Column("expire_at", UTCDateTime(), nullable=True),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
        Column("tombstone", Boolean, nullable=False, default=False),
        CheckConstraint(one_of("status", Status), name="status_known"),
    )
    Index("ix_reservations_status_expire_at", table.c.status, table.c.expire_at)
    return table


def one_of(column: str, values: type[StrEnum]) -> str:
    """A CHECK constraint's text: `column` holds one of the enum's values (migration 0002 writes it out)."""
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"
