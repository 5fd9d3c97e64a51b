"""Revision 3 of the flight database: seat assignments, one row per seat held or confirmed.

The primary key (flight_id, seat) is what keeps two reservations from ever holding one seat; the rows
are written and deleted in the transactions that move flight_cabins' counters. Reservations made before
this revision hold seats by count only: the flight audit reports them (no seat rows) until they end.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_seat_assignments"
down_revision = "0002_reservation_status_check"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "seat_assignments",
        sa.Column("flight_id", sa.String(length=32), nullable=False),
        sa.Column("seat", sa.String(length=4), nullable=False),
        sa.Column("cabin", sa.String(length=16), nullable=False),
        sa.Column("reservation_id", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["flight_id"], ["flights.flight_id"], name=op.f("fk_seat_assignments_flight_id_flights")
        ),
        sa.PrimaryKeyConstraint("flight_id", "seat", name=op.f("pk_seat_assignments")),
    )
    op.create_index("ix_seat_assignments_reservation_id", "seat_assignments", ["reservation_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_seat_assignments_reservation_id", table_name="seat_assignments")
    op.drop_table("seat_assignments")
