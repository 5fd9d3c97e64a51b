"""Revision 3 of the payment database: refunds drawn on captured charges.

`charges` keeps, per captured charge, how much of it refunds have set aside and paid back (a CHECK keeps
that within the capture); `refund_allocations` keeps each refund's share per charge. Charges captured
before this revision get their row here (nothing refunded yet), so they can be refunded like new ones.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_refunds"
down_revision = "0002_reservation_status_check"
branch_labels = None
depends_on = None


def upgrade() -> None:
    charges = op.create_table(
        "charges",
        sa.Column("reservation_id", sa.String(length=128), nullable=False),
        sa.Column("payment_method_id", sa.String(length=128), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("captured_minor", sa.BigInteger(), nullable=False),
        sa.Column("refund_held_minor", sa.BigInteger(), nullable=False),
        sa.Column("refunded_minor", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("captured_minor >= 0", name=op.f("ck_charges_captured_not_negative")),
        sa.CheckConstraint("refund_held_minor >= 0", name=op.f("ck_charges_refund_held_not_negative")),
        sa.CheckConstraint("refunded_minor >= 0", name=op.f("ck_charges_refunded_not_negative")),
        sa.CheckConstraint(
            "refund_held_minor + refunded_minor <= captured_minor", name=op.f("ck_charges_within_capture")
        ),
        sa.ForeignKeyConstraint(
            ["payment_method_id"],
            ["payment_methods.payment_method_id"],
            name=op.f("fk_charges_payment_method_id_payment_methods"),
        ),
        sa.ForeignKeyConstraint(
            ["reservation_id"], ["reservations.reservation_id"], name=op.f("fk_charges_reservation_id_reservations")
        ),
        sa.PrimaryKeyConstraint("reservation_id", name=op.f("pk_charges")),
    )
    op.create_table(
        "refund_allocations",
        sa.Column("refund_id", sa.String(length=128), nullable=False),
        sa.Column("charge_id", sa.String(length=128), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_refund_allocations_amount_positive")),
        sa.ForeignKeyConstraint(
            ["charge_id"], ["charges.reservation_id"], name=op.f("fk_refund_allocations_charge_id_charges")
        ),
        sa.PrimaryKeyConstraint("refund_id", "charge_id", name=op.f("pk_refund_allocations")),
    )
    _record_captured_charges(charges)


def _record_captured_charges(charges: sa.Table) -> None:
    """A charges row for every payment captured before this revision (a refund has none)."""
    reservations = sa.table(
        "reservations",
        sa.column("reservation_id", sa.String),
        sa.column("status", sa.String),
        sa.column("details", sa.JSON),
        sa.column("price_minor", sa.BigInteger),
        sa.column("currency", sa.String),
        sa.column("tombstone", sa.Boolean),
    )
    captured = op.get_bind().execute(
        sa.select(reservations).where(reservations.c.status == "CONFIRMED", reservations.c.tombstone.is_(False))
    )
    rows = [
        {
            "reservation_id": r.reservation_id,
            "payment_method_id": r.details["payment_method_id"],
            "currency": r.currency,
            "captured_minor": r.price_minor,
            "refund_held_minor": 0,
            "refunded_minor": 0,
        }
        for r in captured
        if isinstance(r.details, dict) and "payment_method_id" in r.details and not r.details.get("refund_of")
    ]
    if rows:
        op.bulk_insert(charges, rows)


def downgrade() -> None:
    op.drop_table("refund_allocations")
    op.drop_table("charges")
