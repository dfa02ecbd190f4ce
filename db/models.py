"""Tables of the tuning database. Changed only together with a migration in db/migrations."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import false


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

    workload: Mapped[Workload] = relationship(back_populates="records")
