"""The job queue in the database: claims, leases, requeue after a dead worker, cancellation, keys."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from tuner.db import jobs
from tuner.db.engine import make_engine
from tuner.db.keys import create_key, list_keys, revoke_key, team_for_key
from tuner.db.migrate import upgrade
from tuner.db.models import Job, utcnow
from tuner.errors import TunerError
from tuner.jobs.storage import new_job_id


def _engine(db_url: str):  # noqa: ANN202
    engine = make_engine(db_url)
    upgrade(engine)
    return engine


def _job(team: str = "vision", trials: int = 10, key: str | None = None) -> Job:
    return Job(id=new_job_id(), team=team, name="m", status="queued", target_json="{}", trials=trials,
               input_shapes_json="{}", model_sha256="0" * 64, model_bytes=1, request_sha256="1" * 64,
               idempotency_key=key, created_at=utcnow(), attempts=0, trials_done=0, trials_total=trials)


def test_concurrent_workers_claim_each_job_exactly_once(db_url: str) -> None:
    engine = _engine(db_url)
    queued = {jobs.insert_job(engine, _job())[0].id for _ in range(12)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        while (job := jobs.claim_next(engine, f"w{n}", lease_s=60)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(queued)
    assert jobs.status_counts(engine)["running"] == 12


def test_a_dead_workers_job_is_requeued_then_failed_with_the_reason(db_url: str) -> None:
    engine = _engine(db_url)
    job = jobs.insert_job(engine, _job())[0]
    first = jobs.claim_next(engine, "w1", lease_s=60)
    assert first.id == job.id and first.attempts == 1 and first.status == "running"
    assert jobs.renew_lease(engine, job.id, "w1", lease_s=60)
    assert jobs.reap_expired(engine, max_attempts=2) == []  # lease still valid

    def expire() -> None:
        with engine.begin() as conn:
            conn.execute(update(Job).where(Job.id == job.id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))

    expire()
    assert jobs.reap_expired(engine, max_attempts=2) == [(job.id, "queued")]
    assert not jobs.renew_lease(engine, job.id, "w1", lease_s=60)  # w1 lost it
    assert not jobs.finish(engine, job.id, "w1", "succeeded")  # and cannot write its end
    second = jobs.claim_next(engine, "w2", lease_s=60)
    assert second.id == job.id and second.attempts == 2 and second.error is None
    expire()
    assert jobs.reap_expired(engine, max_attempts=2) == [(job.id, "failed")]
    failed = jobs.get_job(engine, job.id)
    assert failed.status == "failed" and "stopped renewing its lease" in failed.error and failed.finished_at


def test_cancel_wins_over_the_worker_and_release_requeues(db_url: str) -> None:
    engine = _engine(db_url)
    job = jobs.insert_job(engine, _job())[0]
    jobs.claim_next(engine, "w1", lease_s=60)
    assert jobs.cancel(engine, job.id, "speech") is None or jobs.get_job(engine, job.id).status == "running"
    assert jobs.cancel(engine, job.id, "vision").status == "cancelled"
    assert not jobs.renew_lease(engine, job.id, "w1", lease_s=60)
    assert not jobs.finish(engine, job.id, "w1", "succeeded")
    assert jobs.get_job(engine, job.id).status == "cancelled"

    other = jobs.insert_job(engine, _job())[0]
    jobs.claim_next(engine, "w1", lease_s=60)
    assert jobs.release(engine, other.id, "w1")
    back = jobs.get_job(engine, other.id)
    assert back.status == "queued" and back.attempts == 0 and back.worker_id is None


def test_team_load_and_idempotency_conflicts(db_url: str) -> None:
    engine = _engine(db_url)
    first, created = jobs.insert_job(engine, _job(trials=10, key="k"))
    again, created_again = jobs.insert_job(engine, _job(trials=10, key="k"))
    assert created and not created_again and again.id == first.id
    jobs.insert_job(engine, _job(trials=5))
    jobs.insert_job(engine, _job(team="speech", trials=7))
    assert jobs.team_load(engine, "vision") == jobs.TeamLoad(active_jobs=2, active_trials=15)
    jobs.cancel(engine, first.id, "vision")
    assert jobs.team_load(engine, "vision") == jobs.TeamLoad(active_jobs=1, active_trials=5)


def test_api_keys_are_stored_hashed_and_revocable(db_url: str) -> None:
    engine = _engine(db_url)
    key, info = create_key(engine, "vision")
    assert key.startswith(info.prefix) and len(key) > 40
    assert team_for_key(engine, key) == "vision" and team_for_key(engine, key + "x") is None
    with engine.connect() as conn:
        dump = " ".join(str(row) for row in conn.exec_driver_sql("SELECT * FROM api_keys"))
    assert key not in dump
    assert [k.prefix for k in list_keys(engine, "vision")] == [info.prefix]
    assert revoke_key(engine, info.prefix).revoked_at is not None
    assert team_for_key(engine, key) is None
    with pytest.raises(TunerError, match="no API key"):
        revoke_key(engine, "tnr_missing")
    with pytest.raises(TunerError, match="invalid team name"):
        create_key(engine, "../etc")
