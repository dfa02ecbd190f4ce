"""Tables of the tuning database. Changed only together with a migration in db/migrations."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import false, func, or_


# What a record's check found (TuningRecord.check_status).
CHECK_OK, CHECK_WRONG, CHECK_FAILED = "ok", "wrong", "failed"


def never_found_wrong(r: type[TuningRecord]) -> Any:
    """Records no check rejected, under any TVM version: what may teach a cost model and hold a
    place among the best that prune keeps."""
    return or_(r.check_status.is_(None), r.check_status == CHECK_OK)


def serving_order(r: type[TuningRecord]) -> list[Any]:
    """Best first, as compilation picks a workload's record: records with a final timing
    (tuner/search/final_timing.py: timed again side by side when their search ended) by that
    time, before every record ranked only by the time its search measured (ties: the first
    stored). A search's own times, taken minutes apart on a noisy machine, favour the luckiest
    candidate; the final timing compares the best few under the same conditions."""
    return [r.final_secs.is_(None), func.coalesce(r.final_secs, r.mean_run_secs), r.id]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Hardware(Base):
    """One kind of machine: records are served only to the same key."""

    __tablename__ = "hardware"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # Hardware of one family shares ISA and compiler tuning: its records warm-start the search.
    family: Mapped[str] = mapped_column(String(64), index=True)
    fingerprint_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Workload(Base):
    """A TIR kernel to tune, identified by its structural hash and its serialized IRModule.

    The hash may collide; (shash, mod_sha256) is unique and structural equality decides.
    """

    __tablename__ = "workloads"
    __table_args__ = (UniqueConstraint("shash", "mod_sha256", name="uq_workload_identity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shash: Mapped[int] = mapped_column(BigInteger, index=True)
    mod_sha256: Mapped[str] = mapped_column(String(64))
    mod_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    records: Mapped[list[TuningRecord]] = relationship(back_populates="workload")


class TuningRecord(Base):
    """One measured schedule (a trace) of a workload on one hardware key.

    ``record_sha256`` hashes what was measured (trace, times, target, arguments), so committing
    the same measurement twice (a re-import, a retried commit) is a no-op for the database.
    """

    __tablename__ = "tuning_records"
    __table_args__ = (
        Index("ix_records_topk", "workload_id", "hardware_key", "mean_run_secs"),
        UniqueConstraint("workload_id", "hardware_key", "record_sha256", name="uq_record_identity"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workload_id: Mapped[int] = mapped_column(ForeignKey("workloads.id", ondelete="CASCADE"))
    hardware_key: Mapped[str] = mapped_column(ForeignKey("hardware.key"), index=True)
    target_json: Mapped[str] = mapped_column(Text)
    trace_json: Mapped[str] = mapped_column(Text)
    args_info_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    run_secs_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    # NULL when the candidate failed to build or run: kept for the cost model, never served.
    mean_run_secs: Mapped[float | None] = mapped_column(Float, nullable=True)
    record_sha256: Mapped[str] = mapped_column(String(64))
    team: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # Private records are served only to their own team; shared ones (the default) to everyone.
    private: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tuner_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Whether the record's kernel computes what its workload says (cluster/kernel_check.py):
    # NULL unchecked, "ok", "wrong" (its output differed) or "failed" (the check could not build
    # or run it). Only "ok" under the TVM version that compiles is served; under another
    # version a record counts as unchecked and is checked again on first use.
    check_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    check_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    checked_tvm: Mapped[str | None] = mapped_column(String(32), nullable=True)
    checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The record's time in the final timing of its workload's last search on this hardware key
    # (median of rounds by turns beside the task's other best records and its default), or NULL
    # (not among them): ranks before ``mean_run_secs`` (serving_order).
    final_secs: Mapped[float | None] = mapped_column(Float, nullable=True)
    final_timed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    workload: Mapped[Workload] = relationship(back_populates="records")


class CostModel(Base):
    """A cost model trained on the records of one hardware family (schedules/cost_model.py):
    every search on that family starts from it. ``owner`` is "" for the model of the shared
    records, else the team whose private records it also learned from (served to that team
    only). A model is valid for the TVM version that extracted its features."""

    __tablename__ = "cost_models"
    __table_args__ = (UniqueConstraint("family", "tvm_version", "owner", name="uq_cost_model_identity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    family: Mapped[str] = mapped_column(String(64))
    tvm_version: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(64))
    records: Mapped[int] = mapped_column(Integer)
    workloads: Mapped[int] = mapped_column(Integer)
    # Mean rank correlation of predicted and measured speed on workloads held out of training.
    holdout_spearman: Mapped[float | None] = mapped_column(Float, nullable=True)
    blob_format: Mapped[int] = mapped_column(Integer)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    train_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """A team's key for `tuner serve`. Only its SHA-256 is stored: keys are 32 random bytes,
    so a fast hash is as safe as a slow one and keeps every request's lookup one index probe."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    team: Mapped[str] = mapped_column(String(64), index=True)
    # The key's first characters: names it in `tuner keys list|revoke` without revealing it.
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Job(Base):
    """A tuning job of `tuner serve`. The queue is this table: a restarted service finds its jobs,
    and a worker owns a running job only while it renews the lease."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("team", "idempotency_key", name="uq_job_idempotency"),
        Index("ix_jobs_queue", "status", "created_at"),
        Index("ix_jobs_team", "team", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    team: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    # queued | running | succeeded | failed | cancelled
    status: Mapped[str] = mapped_column(String(16))
    target_json: Mapped[str] = mapped_column(Text)
    trials: Mapped[int] = mapped_column(Integer)
    # Also tune tasks the database already serves (`tuner run --refine`).
    refine: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    input_shapes_json: Mapped[str] = mapped_column(Text)
    model_sha256: Mapped[str] = mapped_column(String(64))
    model_bytes: Mapped[int] = mapped_column(BigInteger)
    # Hash of the model and every parameter: the same Idempotency-Key must come with the same request.
    request_sha256: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    trials_done: Mapped[int] = mapped_column(Integer, default=0)
    trials_total: Mapped[int] = mapped_column(Integer, default=0)
    best_latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    tasks: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tasks_from_db: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    report_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    artifact_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
