"""Cost models in the database: the records a family's model learns from, and the stored models.

Who learns from what: the shared model of a family (owner "") from the family's shared records;
a team's model from those plus the team's private records, so private measurements never shape
what other teams are served. A search loads its team's model where there is one, else the
shared one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, delete, func, or_, select
from sqlalchemy.orm import Session

from . import models

SHARED = ""


def _trainable(r: type[models.TuningRecord], family: str, owner: str) -> list[Any]:
    """Measured records of the family's hardware that no check rejected, as `owner` may read."""
    keys = select(models.Hardware.key).where(models.Hardware.family == family)
    visible = r.private.is_(False) if owner == SHARED else or_(r.private.is_(False), r.team == owner)
    return [r.hardware_key.in_(keys), r.mean_run_secs.is_not(None), visible, models.never_found_wrong(r)]


def count_trainable(engine: Engine, family: str, owner: str = SHARED) -> int:
    r = models.TuningRecord
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(r).where(*_trainable(r, family, owner))) or 0)


@dataclass(frozen=True)
class TrainingRow:
    shash: int
    mod_json: str
    trace_json: str
    args_info_json: str | None
    mean_run_secs: float
    target_json: str


def trainable_records(engine: Engine, family: str, owner: str = SHARED) -> Iterator[TrainingRow]:
    r, w = models.TuningRecord, models.Workload
    stmt = (select(w.shash, w.mod_json, r.trace_json, r.args_info_json, r.mean_run_secs, r.target_json)
            .join(w, w.id == r.workload_id).where(*_trainable(r, family, owner)).order_by(r.workload_id, r.id))
    with engine.connect() as conn:
        for row in conn.execute(stmt):
            yield TrainingRow(*row)


def store(engine: Engine, family: str, tvm_version: str, owner: str, meta: dict[str, Any], blob: bytes,
          blob_format: int, train_seconds: float) -> None:
    """Replace the family's model of this TVM version and owner (one transaction: a search that
    loads meanwhile gets the old one or the new one)."""
    c = models.CostModel
    identity = and_(c.family == family, c.tvm_version == tvm_version, c.owner == owner)
    with engine.begin() as conn:
        conn.execute(delete(c).where(identity))
        conn.execute(c.__table__.insert().values(
            family=family, tvm_version=tvm_version, owner=owner, records=int(meta["records"]),
            workloads=int(meta["workloads"]), holdout_spearman=meta.get("holdout_spearman"),
            blob_format=blob_format, blob=blob, train_seconds=train_seconds, created_at=models.utcnow()))


def load(engine: Engine, family: str, tvm_version: str, team: str | None) -> models.CostModel | None:
    """The model a search of `team` on this family starts from: the team's own, else the shared one."""
    c = models.CostModel
    owners = [SHARED] if not team else [team, SHARED]
    with Session(engine) as session:
        rows = session.scalars(select(c).where(c.family == family, c.tvm_version == tvm_version,
                                               c.owner.in_(owners))).all()
        session.expunge_all()
    by_owner = {row.owner: row for row in rows}
    return next((by_owner[o] for o in owners if o in by_owner), None)


def listing(engine: Engine, family: str | None = None) -> list[dict[str, Any]]:
    c = models.CostModel
    stmt = select(c.id, c.family, c.tvm_version, c.owner, c.records, c.workloads, c.holdout_spearman,
                  c.blob_format, func.length(c.blob), c.train_seconds, c.created_at).order_by(c.family, c.owner)
    if family:
        stmt = stmt.where(c.family == family)
    with engine.connect() as conn:
        return [{"id": row[0], "family": row[1], "tvm_version": row[2], "owner": row[3] or "shared",
                 "records": row[4], "workloads": row[5], "holdout_spearman": row[6], "blob_format": row[7],
                 "bytes": row[8], "train_seconds": row[9], "created_at": row[10].isoformat()}
                for row in conn.execute(stmt)]


def drop(engine: Engine, family: str, owner: str | None = None) -> int:
    """Delete the family's models (of one owner, or all); returns how many went."""
    c = models.CostModel
    stmt = delete(c).where(c.family == family)
    if owner is not None:
        stmt = stmt.where(c.owner == owner)
    with engine.begin() as conn:
        return int(conn.execute(stmt).rowcount or 0)


def owners_with_private_records(engine: Engine, family: str) -> list[str]:
    """Teams with private records in the family: each gets its own model beside the shared one."""
    r = models.TuningRecord
    keys = select(models.Hardware.key).where(models.Hardware.family == family)
    with engine.connect() as conn:
        return sorted(t for t in conn.scalars(select(r.team).distinct().where(
            r.hardware_key.in_(keys), r.private.is_(True), r.team.is_not(None))) if t)

