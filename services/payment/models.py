"""Payment tables: payment methods with their credit counters, the reservations, and a money ledger.

A payment method holds three counters in minor units of its currency: `credit_limit_minor`,
`authorized_minor` (held by authorisations not yet captured) and `captured_minor` (charged). The
check constraints make a negative counter or an overdrawn method impossible at the database level.

The ledger is append-only: one row per money movement of a reservation, written in the same
transaction as the counters. The unique (reservation_id, kind) makes each movement happen at most once
per reservation (I7), and summing it per method must give the counters back (I6).

A refund is a reservation too (its details name the charges it is drawn on, `refund_of`). Each captured
charge has a `charges` row saying how much of it is set aside by held refunds and how much was paid
back; the CHECK makes refunding more than was captured impossible. `refund_allocations` says which
share of a refund each charge gives.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Integer,
    String,
    Table,
    UniqueConstraint,
)

from services.kit.db import UTCDateTime, new_metadata
from services.participant.models import reservation_table

metadata = new_metadata()

reservations = reservation_table(metadata)

customers = Table(
    "customers",
    metadata,
    Column("customer_id", String(128), primary_key=True),
    Column("name", String(200), nullable=False),
)

payment_methods = Table(
    "payment_methods",
    metadata,
    Column("payment_method_id", String(128), primary_key=True),
    Column("customer_id", ForeignKey("customers.customer_id"), nullable=False, index=True),
    Column("brand", String(32), nullable=False),
    Column("last4", String(4), nullable=False),
    Column("currency", String(3), nullable=False),
    # A test card the issuer always refuses (CARD_DECLINED).
    Column("always_declines", Boolean, nullable=False, default=False),
    Column("credit_limit_minor", BigInteger, nullable=False),
    Column("authorized_minor", BigInteger, nullable=False, default=0),
    Column("captured_minor", BigInteger, nullable=False, default=0),
    CheckConstraint("authorized_minor >= 0", name="authorized_not_negative"),
    CheckConstraint("captured_minor >= 0", name="captured_not_negative"),
    CheckConstraint("authorized_minor + captured_minor <= credit_limit_minor", name="within_credit_limit"),
)

ledger = Table(
    "ledger",
    metadata,
    Column("entry_id", Integer, primary_key=True, autoincrement=True),
    # Looked up through uq_ledger_reservation_id_kind (reservation_id first); no index of its own.
    Column("reservation_id", String(128), nullable=False),
    Column("payment_method_id", ForeignKey("payment_methods.payment_method_id"), nullable=False),
    # AUTHORIZE, CAPTURE, VOID, REFUND, EXPIRE, REFUND_HOLD, REFUND_RELEASE or REFUND_EXPIRE (domain.LedgerKind).
    Column("kind", String(16), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    UniqueConstraint("reservation_id", "kind", name="uq_ledger_reservation_id_kind"),
    CheckConstraint("amount_minor > 0", name="amount_positive"),
)

charges = Table(
    "charges",
    metadata,
    # The charge's reservation; written when it is captured.
    Column("reservation_id", ForeignKey("reservations.reservation_id"), primary_key=True),
    Column("payment_method_id", ForeignKey("payment_methods.payment_method_id"), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("captured_minor", BigInteger, nullable=False),
    # Set aside by refunds reserved but not yet paid out.
    Column("refund_held_minor", BigInteger, nullable=False, default=0),
    # Paid back: by refunds confirmed, or all of it when the charge itself was cancelled.
    Column("refunded_minor", BigInteger, nullable=False, default=0),
    CheckConstraint("captured_minor >= 0", name="captured_not_negative"),
    CheckConstraint("refund_held_minor >= 0", name="refund_held_not_negative"),
    CheckConstraint("refunded_minor >= 0", name="refunded_not_negative"),
    CheckConstraint("refund_held_minor + refunded_minor <= captured_minor", name="within_capture"),
)

refund_allocations = Table(
    "refund_allocations",
    metadata,
    # The refund's reservation id (no foreign key: the allocation is written before its reservation row).
    Column("refund_id", String(128), primary_key=True),
    Column("charge_id", ForeignKey("charges.reservation_id"), primary_key=True),
    Column("amount_minor", BigInteger, nullable=False),
    CheckConstraint("amount_minor > 0", name="amount_positive"),
)
