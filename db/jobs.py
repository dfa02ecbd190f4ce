"""The job queue of `tuner serve`, kept in the tuning database.

Jobs live here, not in a process's memory: any service process may claim a queued job, a worker
owns a running one only while it renews its lease, and every state change is a conditional
UPDATE, so a worker that lost its job (lease expired, job cancelled) can never overwrite the
state someone else wrote. On PostgreSQL workers claim with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import Job, utcnow

ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
STATUSES = ACTIVE + FINAL


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time stored here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def _session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def insert_job(engine: Engine, job: Job) -> tuple[Job, bool]:
    """Insert `job`; with an idempotency key already used by its team, the existing job instead.

    Returns (job, created)."""
    try:
        with _session(engine) as session, session.begin():
            session.add(job)
        return job, True
    except IntegrityError:
        if job.idempotency_key is None:
            raise
    existing = find_by_idempotency_key(engine, job.team, job.idempotency_key)
    if existing is None:  # the conflicting row went away in between: rare, try once more
        return insert_job(engine, job)
    return existing, False


def find_by_idempotency_key(engine: Engine, team: str, key: str) -> Job | None:
    with _session(engine) as session:
        return session.scalars(select(Job).where(Job.team == team, Job.idempotency_key == key)).first()


def get_job(engine: Engine, job_id: str, team: str | None = None) -> Job | None:
    """The job, only if it belongs to `team` (None: any team, for workers)."""
    with _session(engine) as session:
        job = session.get(Job, job_id)
    if job is None or (team is not None and job.team != team):
        return None
    return job


def list_jobs(engine: Engine, team: str, status: str | None, limit: int, offset: int) -> tuple[list[Job], int]:
    """A page of the team's jobs, newest first, and how many there are in all."""
    where = [Job.team == team] + ([Job.status == status] if status else [])
    with _session(engine) as session:
        total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
        rows = session.scalars(
            select(Job).where(*where).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
        ).all()
    return list(rows), int(total)


@dataclass(frozen=True)
class TeamLoad:
    active_jobs: int
    # Trials the team's queued and running jobs may still spend.
    active_trials: int


def team_load(engine: Engine, team: str) -> TeamLoad:
    with _session(engine) as session:
        jobs, trials = session.execute(
            select(func.count(), func.coalesce(func.sum(Job.trials - Job.trials_done), 0))
            .where(Job.team == team, Job.status.in_(ACTIVE))
        ).one()
    return TeamLoad(int(jobs), int(trials))


def status_counts(engine: Engine) -> dict[str, int]:
    with _session(engine) as session:
        rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({status: int(n) for status, n in rows})
    return counts


def claim_next(engine: Engine, worker_id: str, lease_s: float) -> Job | None:
    """Take the oldest queued job and start its lease, or None when the queue is empty."""
    with _session(engine) as session, session.begin():
        job_id = session.scalars(
            select(Job.id).where(Job.status == "queued").order_by(Job.created_at, Job.id)
            .limit(1).with_for_update(skip_locked=True)
        ).first()
        if job_id is None:
            return None
        now = utcnow()
        claimed = session.execute(
            update(Job).where(Job.id == job_id, Job.status == "queued").values(
                status="running", worker_id=worker_id, started_at=now, heartbeat_at=now,
                lease_expires_at=now + timedelta(seconds=lease_s), attempts=Job.attempts + 1,
                error=None,
            )
        ).rowcount
        if claimed != 1:  # SQLite has no row locks: another process took it first
            return None
    return get_job(engine, job_id)


def _owned(job_id: str, worker_id: str) -> list:
    return [Job.id == job_id, Job.worker_id == worker_id, Job.status == "running"]


def renew_lease(engine: Engine, job_id: str, worker_id: str, lease_s: float) -> bool:
    """Heartbeat; False when the job is no longer this worker's (cancelled, or requeued)."""
    now = utcnow()
    with engine.begin() as conn:
        return conn.execute(
            update(Job).where(*_owned(job_id, worker_id))
            .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_s))
        ).rowcount == 1


def record_progress(engine: Engine, job_id: str, **fields: Any) -> None:
    """Progress of a running job (trials_done, best_latency_ms, tasks, ...), from its process."""
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(**fields))


def finish(engine: Engine, job_id: str, worker_id: str, status: str, *, error: str | None = None,
           report: dict[str, Any] | None = None) -> bool:
    """The job's final state, written only while the worker still owns it."""
    assert status in FINAL
    values: dict[str, Any] = dict(status=status, finished_at=utcnow(), error=error, lease_expires_at=None)
    if report is not None:
        values.update(report_json=json.dumps(report), artifact_sha256=report["artifact"]["sha256"],
                      artifact_bytes=report["artifact"]["bytes"], trials_done=report["trials"],
                      tasks=report["tasks"], tasks_from_db=report["tasks_from_db"])
        if report["latency_ms"].get("tuned") is not None:
            values["best_latency_ms"] = report["latency_ms"]["tuned"]
    with engine.begin() as conn:
        return conn.execute(update(Job).where(*_owned(job_id, worker_id)).values(**values)).rowcount == 1


def release(engine: Engine, job_id: str, worker_id: str) -> bool:
    """Give a running job back to the queue (service shutting down); its attempt is not counted."""
    with engine.begin() as conn:
        return conn.execute(
            update(Job).where(*_owned(job_id, worker_id)).values(
                status="queued", worker_id=None, lease_expires_at=None, attempts=Job.attempts - 1)
        ).rowcount == 1


def cancel(engine: Engine, job_id: str, team: str) -> Job | None:
    """Cancel a queued or running job of `team` (its worker stops the process); None if not found.

    A job that already ended is returned unchanged."""
    with engine.begin() as conn:
        conn.execute(
            update(Job).where(Job.id == job_id, Job.team == team, Job.status.in_(ACTIVE)).values(
                status="cancelled", finished_at=utcnow(), lease_expires_at=None,
                error="cancelled on request; records measured before that are kept")
        )
    return get_job(engine, job_id, team)


def reap_expired(engine: Engine, max_attempts: int) -> list[tuple[str, str]]:
    """Jobs left `running` by a worker that stopped renewing its lease (it died, or its service
    was killed): requeued, or failed with the reason once they were started `max_attempts` times.

    Returns (job id, new status) for each."""
    now = utcnow()
    changed: list[tuple[str, str]] = []
    with _session(engine) as session, session.begin():
        stale = session.execute(
            select(Job.id, Job.attempts, Job.worker_id)
            .where(Job.status == "running", Job.lease_expires_at < now)
            .with_for_update(skip_locked=True)
        ).all()
        for job_id, attempts, worker in stale:
            if attempts < max_attempts:
                values: dict[str, Any] = dict(status="queued", worker_id=None, lease_expires_at=None,
                                              error=f"requeued: worker {worker} stopped renewing its lease")
            else:
                values = dict(status="failed", finished_at=now, lease_expires_at=None,
                              error=f"the job's worker stopped renewing its lease (it died or its service "
                                    f"was stopped) on all {attempts} attempts; last worker {worker}")
            done = session.execute(
                update(Job).where(Job.id == job_id, Job.status == "running", Job.lease_expires_at < now)
                .values(**values)
            ).rowcount
            if done:
                changed.append((job_id, values["status"]))
    return changed
