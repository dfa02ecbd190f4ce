"""Record checks: whether a record's kernel computes what its workload says.

A record is served only once its kernel matched the workload's unscheduled kernel on random
inputs, under the TVM version that compiles it. Existing rows start unchecked (NULL) and are
checked on first use.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tuning_records") as batch:
        batch.add_column(sa.Column("check_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("check_detail", sa.Text(), nullable=True))
        batch.add_column(sa.Column("checked_tvm", sa.String(32), nullable=True))
        batch.add_column(sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tuning_records") as batch:
        batch.drop_column("checked_at")
        batch.drop_column("checked_tvm")
        batch.drop_column("check_detail")
        batch.drop_column("check_status")
