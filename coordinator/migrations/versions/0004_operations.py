"""Revision 4 of the coordinator database: changes and cancellations of booked trips.

trips gets `operations` (JSON, NULL for a trip never changed nor cancelled: every trip written before
stays as it was) and its state CHECK admits the four states of a change or a cancellation under way
(CHANGING, CHANGE_CONFIRMING, CHANGE_REVERTING, CANCELLING). Recovery drives trips in these states like
any other unfinished trip. SQLite cannot alter a constraint, so there the table is copied (batch mode).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_operations"
down_revision = "0003_leases"
branch_labels = None
depends_on = None

OLD_STATES = "('PENDING', 'RESERVING', 'CONFIRMING', 'CONFIRMED', 'COMPENSATING', 'CANCELLED', 'NEEDS_ATTENTION')"
NEW_STATES = OLD_STATES[:-1] + ", 'CHANGING', 'CHANGE_CONFIRMING', 'CHANGE_REVERTING', 'CANCELLING')"


def upgrade() -> None:
    with op.batch_alter_table("trips") as batch:
        batch.add_column(sa.Column("operations", sa.JSON(), nullable=True))
        batch.drop_constraint(op.f("ck_trips_state_known"), type_="check")
        batch.create_check_constraint(op.f("ck_trips_state_known"), f"state IN {NEW_STATES}")


def downgrade() -> None:
    with op.batch_alter_table("trips") as batch:
        batch.drop_constraint(op.f("ck_trips_state_known"), type_="check")
        batch.create_check_constraint(op.f("ck_trips_state_known"), f"state IN {OLD_STATES}")
        batch.drop_column("operations")
