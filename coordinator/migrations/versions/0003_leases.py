"""Revision 3 of the coordinator database: trip leases and fencing tokens (coordinator replicas, I8).

trips gets the lease (`owner`, `fence`, `lease_expires_at` and its index), steps the token and
replica of their last write, and trip_leases one row per grant. A trip that was still in flight when
the database was upgraded gets a lease that has already expired, so the first replica to start takes
it over (a NULL lease would mean nobody ever drives it again). A database that create_all made with
these columns already (before migrations existed) is adopted: what is there is not added again.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_leases"
down_revision = "0002_state_checks"
branch_labels = None
depends_on = None

TERMINAL = "('CONFIRMED', 'CANCELLED', 'NEEDS_ATTENTION')"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    trip_columns = {c["name"] for c in inspector.get_columns("trips")}
    step_columns = {c["name"] for c in inspector.get_columns("steps")}
    if "owner" not in trip_columns:
        with op.batch_alter_table("trips") as batch:
            batch.add_column(sa.Column("owner", sa.String(length=128), nullable=False, server_default=""))
            batch.add_column(sa.Column("fence", sa.BigInteger(), nullable=False, server_default="0"))
            batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        op.execute(f"UPDATE trips SET lease_expires_at = updated_at WHERE state NOT IN {TERMINAL}")
    if "ix_trips_lease_expires_at" not in {i["name"] for i in inspector.get_indexes("trips")}:
        op.create_index("ix_trips_lease_expires_at", "trips", ["lease_expires_at"], unique=False)
    if "owner" not in step_columns:
        with op.batch_alter_table("steps") as batch:
            batch.add_column(sa.Column("fence", sa.BigInteger(), nullable=False, server_default="0"))
            batch.add_column(sa.Column("owner", sa.String(length=128), nullable=False, server_default=""))
    if "trip_leases" not in inspector.get_table_names():
        op.create_table(
            "trip_leases",
            sa.Column("trip_id", sa.String(length=64), nullable=False),
            sa.Column("fence", sa.BigInteger(), nullable=False),
            sa.Column("owner", sa.String(length=128), nullable=False),
            sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("reason", sa.String(length=16), nullable=False),
            sa.ForeignKeyConstraint(["trip_id"], ["trips.trip_id"], name=op.f("fk_trip_leases_trip_id_trips")),
            sa.PrimaryKeyConstraint("trip_id", "fence", name=op.f("pk_trip_leases")),
        )


def downgrade() -> None:
    op.drop_table("trip_leases")
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("owner")
        batch.drop_column("fence")
    op.drop_index("ix_trips_lease_expires_at", table_name="trips")
    with op.batch_alter_table("trips") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("fence")
        batch.drop_column("owner")
