"""Revision 2 of the car database: reservations.status may only hold a status the state machine knows.

A row in any other status would be invisible to the sweeper and refused by every call; the CHECK makes
such a write fail where it happens instead. SQLite cannot add a constraint to a table, so there the
table is copied (Alembic's batch mode), rows and index included.
"""

from alembic import op

revision = "0002_reservation_status_check"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

CHECK = "ck_reservations_status_known"
STATUSES = "status IN ('HELD', 'CONFIRMED', 'CANCELLED', 'EXPIRED')"


def upgrade() -> None:
    with op.batch_alter_table("reservations") as batch:
        batch.create_check_constraint(op.f(CHECK), STATUSES)


def downgrade() -> None:
    with op.batch_alter_table("reservations") as batch:
        batch.drop_constraint(op.f(CHECK), type_="check")
