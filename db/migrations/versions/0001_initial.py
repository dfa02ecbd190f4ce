"""Initial schema: hardware, workloads, tuning records.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hardware",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("fingerprint_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "workloads",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("shash", sa.BigInteger(), nullable=False),
        sa.Column("mod_sha256", sa.String(64), nullable=False),
        sa.Column("mod_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("shash", "mod_sha256", name="uq_workload_identity"),
    )
    op.create_index("ix_workloads_shash", "workloads", ["shash"])
    op.create_table(
        "tuning_records",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "workload_id",
            sa.Integer(),
            sa.ForeignKey("workloads.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("hardware_key", sa.String(64), sa.ForeignKey("hardware.key"), nullable=False),
        sa.Column("target_json", sa.Text(), nullable=False),
        sa.Column("trace_json", sa.Text(), nullable=False),
        sa.Column("args_info_json", sa.Text(), nullable=True),
        sa.Column("run_secs_json", sa.Text(), nullable=True),
        sa.Column("mean_run_secs", sa.Float(), nullable=True),
        sa.Column("team", sa.String(64), nullable=True),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("tuner_version", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_tuning_records_hardware_key", "tuning_records", ["hardware_key"])
    op.create_index("ix_tuning_records_team", "tuning_records", ["team"])
    op.create_index(
        "ix_records_topk", "tuning_records", ["workload_id", "hardware_key", "mean_run_secs"]
    )


def downgrade() -> None:
    op.drop_table("tuning_records")
    op.drop_index("ix_workloads_shash", table_name="workloads")
    op.drop_table("workloads")
    op.drop_table("hardware")
