"""Sharing across teams: hardware families (warm starts), private records, record identity.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""
import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _family(fingerprint: dict) -> str:
    # Frozen copy of tuner.hardware.Fingerprint.family as of this revision.
    fields = {k: fingerprint.get(k) for k in ("kind", "arch", "mcpu", "features")}
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return f"{fingerprint.get('kind')}-family-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def _record_sha256(trace: str, run_secs: str | None, target: str, args_info: str | None) -> str:
    # Frozen copy of tuner.db.database.record_sha256 as of this revision.
    payload = [
        json.loads(trace),
        json.loads(run_secs) if run_secs else None,
        json.loads(target),
        json.loads(args_info) if args_info else None,
    ]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def upgrade() -> None:
    conn = op.get_bind()
    with op.batch_alter_table("hardware") as batch:
        batch.add_column(sa.Column("family", sa.String(64), nullable=True))
    hardware = sa.table("hardware", sa.column("key"), sa.column("fingerprint_json"), sa.column("family"))
    for key, fp in conn.execute(sa.select(hardware.c.key, hardware.c.fingerprint_json)).all():
        family = _family(json.loads(fp))
        conn.execute(hardware.update().where(hardware.c.key == key).values(family=family))
    with op.batch_alter_table("hardware") as batch:
        batch.alter_column("family", existing_type=sa.String(64), nullable=False)
        batch.create_index("ix_hardware_family", ["family"])

    with op.batch_alter_table("tuning_records") as batch:
        batch.add_column(sa.Column("record_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("private", sa.Boolean(), nullable=False, server_default=sa.false()))
    records = sa.table(
        "tuning_records", sa.column("id"), sa.column("trace_json"), sa.column("run_secs_json"),
        sa.column("target_json"), sa.column("args_info_json"), sa.column("record_sha256"),
    )
    rows = conn.execute(
        sa.select(records.c.id, records.c.trace_json, records.c.run_secs_json,
                  records.c.target_json, records.c.args_info_json)
    ).all()
    for rid, trace, run_secs, target, args_info in rows:
        digest = _record_sha256(trace, run_secs, target, args_info)
        conn.execute(records.update().where(records.c.id == rid).values(record_sha256=digest))
    # Identical measurements committed twice before this revision: keep the oldest.
    conn.execute(sa.text(
        "DELETE FROM tuning_records WHERE id NOT IN (SELECT MIN(id) FROM tuning_records "
        "GROUP BY workload_id, hardware_key, record_sha256)"
    ))
    with op.batch_alter_table("tuning_records") as batch:
        batch.alter_column("record_sha256", existing_type=sa.String(64), nullable=False)
        batch.create_unique_constraint(
            "uq_record_identity", ["workload_id", "hardware_key", "record_sha256"]
        )


def downgrade() -> None:
    with op.batch_alter_table("tuning_records") as batch:
        batch.drop_constraint("uq_record_identity", type_="unique")
        batch.drop_column("private")
        batch.drop_column("record_sha256")
    with op.batch_alter_table("hardware") as batch:
        batch.drop_index("ix_hardware_family")
        batch.drop_column("family")
