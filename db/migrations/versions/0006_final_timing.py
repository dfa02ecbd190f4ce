"""Final timing: a record's time from the side-by-side timing that picked a task's served record.

The search times each candidate once, minutes apart from the others, and its fastest of some
hundred noisy measurements is the luckiest more often than the best. At the end of a search
the task's best few records and its default are timed again by turns
(tuner/search/final_timing.py); their times are stored here and rank before the search's own.
Existing rows start without one (NULL) and rank by their search time, as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tuning_records") as batch:
        batch.add_column(sa.Column("final_secs", sa.Float(), nullable=True))
        batch.add_column(sa.Column("final_timed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tuning_records") as batch:
        batch.drop_column("final_timed_at")
        batch.drop_column("final_secs")
