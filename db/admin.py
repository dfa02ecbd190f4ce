"""What `tuner db stats` and `tuner db prune` do: read-mostly maintenance of the shared database."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine, case, delete, func, literal, or_, select, text

from . import models
from .migrate import current_revision, head_revision


def _size_bytes(engine: Engine) -> int | None:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            pages = conn.execute(text("PRAGMA page_count")).scalar() or 0
            return int(pages) * int(conn.execute(text("PRAGMA page_size")).scalar() or 0)
        if engine.dialect.name == "postgresql":
            tables = [t.name for t in models.Base.metadata.sorted_tables] + ["alembic_version"]
            total = 0
            for name in tables:
                total += int(conn.execute(text("SELECT pg_total_relation_size(to_regclass(:t))"),
                                          {"t": name}).scalar() or 0)
            return total
    return None


def database_stats(engine: Engine) -> dict[str, Any]:
    """Counts per hardware key and per team, schema revision and size on disk."""
    r, h = models.TuningRecord, models.Hardware
    valid = func.count(r.mean_run_secs)  # COUNT(col) skips NULL: failed candidates
    with engine.connect() as conn:
        workloads = conn.scalar(select(func.count()).select_from(models.Workload)) or 0
        total, good = conn.execute(select(func.count(r.id), valid)).one()
        per_hardware = [
            {
                "key": key, "kind": kind, "family": family,
                "cpu_model": json.loads(fp).get("cpu_model"), "num_cores": json.loads(fp).get("num_cores"),
                "workloads": int(nw or 0), "records": int(nr or 0), "valid": int(nv or 0),
            }
            for key, kind, family, fp, nw, nr, nv in conn.execute(
                select(h.key, h.kind, h.family, h.fingerprint_json,
                       func.count(func.distinct(r.workload_id)), func.count(r.id), valid)
                .outerjoin(r, r.hardware_key == h.key)
                .group_by(h.key, h.kind, h.family, h.fingerprint_json)
                .order_by(h.key)
            )
        ]
        per_team = [
            {"team": team, "records": int(n), "private": int(p or 0), "hardware_keys": int(k)}
            for team, n, p, k in conn.execute(
                select(r.team, func.count(r.id), func.sum(case((r.private.is_(True), 1), else_=0)),
                       func.count(func.distinct(r.hardware_key)))
                .group_by(r.team).order_by(r.team)
            )
        ]
    return {
        "revision": current_revision(engine),
        "head_revision": head_revision(engine),
        "workloads": int(workloads),
        "records": int(total or 0),
        "valid_records": int(good or 0),
        "failed_records": int((total or 0) - (good or 0)),
        "hardware": per_hardware,
        "teams": per_team,
        "size_bytes": _size_bytes(engine),
    }


@dataclass
class PruneResult:
    keep_top: int
    records_before: int
    records_deleted: int
    failed_deleted: int
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prune(engine: Engine, keep_top: int, dry_run: bool = False) -> PruneResult:
    """Keep the best ``keep_top`` valid records per workload and hardware key; drop the rest.

    Shared records are ranked together; each team's private records are ranked among
    themselves, so pruning never leaves a team without the best record it may read. Failed
    candidates are never served and go too. Records a check rejected stay, outside the ranking.
    Workloads stay: a running tuner may be using them.
    """
    if keep_top < 1:
        raise ValueError("keep_top must be at least 1")
    r = models.TuningRecord
    owner = case((r.private.is_(True), func.coalesce(r.team, "")), else_=literal(None))
    rank = func.row_number().over(
        partition_by=[r.workload_id, r.hardware_key, r.private, owner],
        order_by=models.serving_order(r),
    ).label("rank")
    # Records a check found wrong are kept (never served, they say what was wrong) and take no
    # place among the best.
    ranked = select(r.id, rank).where(r.mean_run_secs.is_not(None), models.never_found_wrong(r)).subquery()
    beyond = select(ranked.c.id).where(ranked.c.rank > keep_top)
    doomed = or_(r.mean_run_secs.is_(None), r.id.in_(beyond))
    with engine.begin() as conn:
        before = int(conn.scalar(select(func.count()).select_from(r)) or 0)
        failed = int(conn.scalar(select(func.count()).select_from(r).where(r.mean_run_secs.is_(None))) or 0)
        count = int(conn.scalar(select(func.count()).select_from(r).where(doomed)) or 0)
        if not dry_run:
            conn.execute(delete(r).where(doomed))
    return PruneResult(keep_top, before, count, failed, dry_run)


def visible_records(engine: Engine, team: str, workload: int | None = None, hardware: str | None = None,
                    limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Records a team may read (every shared one, its own private ones), best first per workload.

    `workload` is MetaSchedule's structural hash (the number in its JSON database files)."""
    r, w = models.TuningRecord, models.Workload
    where = [or_(r.private.is_(False), r.team == team)]
    if workload is not None:
        signed = workload - (1 << 64) if workload >= (1 << 63) else workload
        where.append(w.shash == signed)
    if hardware:
        where.append(r.hardware_key == hardware)
    base = select(r, w.shash).join(w, w.id == r.workload_id).where(*where)
    with engine.connect() as conn:
        total = conn.scalar(select(func.count()).select_from(base.subquery())) or 0
        rows = conn.execute(
            base.order_by(r.workload_id, r.hardware_key, r.mean_run_secs.is_(None), *models.serving_order(r))
            .limit(limit).offset(offset)
        ).all()
    out = []
    for row in rows:
        rec = row._mapping
        out.append({
            "id": rec["id"],
            "workload": str(rec["shash"] + (1 << 64) if rec["shash"] < 0 else rec["shash"]),
            "hardware_key": rec["hardware_key"],
            "mean_run_secs": rec["mean_run_secs"],
            "final_secs": rec["final_secs"],
            "run_secs": json.loads(rec["run_secs_json"]) if rec["run_secs_json"] else None,
            "target": json.loads(rec["target_json"]),
            "trace": json.loads(rec["trace_json"]),
            "args_info": json.loads(rec["args_info_json"]) if rec["args_info_json"] else None,
            "team": rec["team"],
            "private": bool(rec["private"]),
            "job_id": rec["job_id"],
            "check": {"status": rec["check_status"], "detail": rec["check_detail"], "tvm": rec["checked_tvm"]},
            "created_at": rec["created_at"].isoformat() if rec["created_at"] else None,
        })
    return out, int(total)
