"""Revision 2 of the coordinator database: trips.state and steps.status hold only known values.

Recovery drives every trip whose state is not terminal; a trip in a state nobody knows would be
driven by nothing and reported by nothing. The CHECKs refuse such a write where it happens. SQLite
cannot add a constraint to a table, so there both tables are copied (Alembic's batch mode), with their
rows and indexes; migrate() turns foreign keys off around it so copying trips leaves steps alone.
"""

from alembic import op

revision = "0002_state_checks"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

TRIP_STATES = (
    "state IN ('PENDING', 'RESERVING', 'CONFIRMING', 'CONFIRMED', 'COMPENSATING', 'CANCELLED', 'NEEDS_ATTENTION')"
)
STEP_STATUSES = "status IN ('STARTED', 'SUCCEEDED', 'REFUSED', 'FAILED')"


def upgrade() -> None:
    with op.batch_alter_table("trips") as batch:
        batch.create_check_constraint(op.f("ck_trips_state_known"), TRIP_STATES)
    with op.batch_alter_table("steps") as batch:
        batch.create_check_constraint(op.f("ck_steps_status_known"), STEP_STATUSES)


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.drop_constraint(op.f("ck_steps_status_known"), type_="check")
    with op.batch_alter_table("trips") as batch:
        batch.drop_constraint(op.f("ck_trips_state_known"), type_="check")
