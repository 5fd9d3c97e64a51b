"""Revision 1 of the car database: the schema as create_all made it before the car service moved to
migrations (the reservation fence, the cities and the per-day fleet counters).

Written from services.car.models and checked against them by tests/contract/test_migrations.py.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cities",
        sa.Column("city", sa.String(length=80), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.PrimaryKeyConstraint("city", name=op.f("pk_cities")),
    )
    op.create_table(
        "reservations",
        sa.Column("reservation_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("price_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("expire_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tombstone", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("reservation_id", name=op.f("pk_reservations")),
    )
    op.create_index("ix_reservations_status_expire_at", "reservations", ["status", "expire_at"], unique=False)
    op.create_table(
        "car_days",
        sa.Column("city", sa.String(length=80), nullable=False),
        sa.Column("car_class", sa.String(length=16), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("confirmed", sa.Integer(), nullable=False),
        sa.Column("rate_minor", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("confirmed >= 0", name=op.f("ck_car_days_confirmed_not_negative")),
        sa.CheckConstraint("held + confirmed <= capacity", name=op.f("ck_car_days_within_capacity")),
        sa.CheckConstraint("held >= 0", name=op.f("ck_car_days_held_not_negative")),
        sa.ForeignKeyConstraint(["city"], ["cities.city"], name=op.f("fk_car_days_city_cities")),
        sa.PrimaryKeyConstraint("city", "car_class", "day", name=op.f("pk_car_days")),
    )


def downgrade() -> None:
    op.drop_table("car_days")
    op.drop_index("ix_reservations_status_expire_at", table_name="reservations")
    op.drop_table("reservations")
    op.drop_table("cities")
