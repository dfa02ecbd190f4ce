"""The SQL tuning database behaves as MetaSchedule's Database on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tvm.target import Target

from tests.tir_helpers import TARGET, checked, matmul, record
from tuner.db import models
from tuner.db.database import mean_run_secs, signed_shash
from tuner.db.engine import redact_url
from tuner.pipeline import open_database


def test_round_trip_and_top_k(db_url: str) -> None:
    db = open_database(db_url, TARGET)
    mod = matmul(32)
    assert not db.has_workload(mod)
    for secs in ([3e-4], [1e-4, 1e-4], [2e-4], [1e10]):
        db.commit_tuning_record(record(db, mod, secs))
    assert db.has_workload(mod)
    assert len(db) == 4
    top = db.get_top_k(db.commit_workload(mod), 2)
    assert [mean_run_secs(r.run_secs) for r in top] == pytest.approx([1e-4, 2e-4])
    assert db.best(mod) is None  # nothing is served before its check
    assert checked(db, mod).passed == 1  # the fastest, which then is served
    assert db.best(mod).mean_run_secs == pytest.approx(1e-4)
    # A second handle (another process, later run) sees the same data and can apply the trace.
    again = open_database(db_url, TARGET)
    best = again.query_tuning_record(mod, Target(TARGET), "main")
    assert best is not None and mean_run_secs(best.run_secs) == pytest.approx(1e-4)
    assert again.query_schedule(mod, Target(TARGET), "main") is not None
    assert len(again.get_all_tuning_records()) == 4


def test_default_schedules_are_compiled_but_never_seed_the_search(db_url: str) -> None:
    db = open_database(db_url, TARGET)
    mod = matmul(24)
    db.commit_tuning_record(record(db, mod, [1e-5], searched=False))  # a stored default (dlight)
    checked(db, mod)
    assert db.best(mod).mean_run_secs == pytest.approx(1e-5)
    assert db.query_tuning_record(mod, Target(TARGET), "main") is not None
    assert db.best(mod, searched_only=True) is None  # still worth tuning
    assert db.get_top_k(db.commit_workload(mod), 4) == []
    db.commit_tuning_record(record(db, mod, [2e-5]))
    assert db.best(mod, searched_only=True).mean_run_secs == pytest.approx(2e-5)
    assert [mean_run_secs(r.run_secs) for r in db.get_top_k(db.commit_workload(mod), 4)] == pytest.approx([2e-5])
    assert mean_run_secs(db.query_tuning_record(mod, Target(TARGET), "main").run_secs) == pytest.approx(1e-5)


def test_a_stored_default_time_is_found_for_its_own_trace_only(db_url: str) -> None:
    """What lets a run skip measuring a default schedule an earlier run measured: the time of
    that exact trace on this hardware, never another schedule's, another machine's, or one a
    check found wrong."""
    db = open_database(db_url, TARGET)
    mod = matmul(20)
    default = record(db, mod, [2e-5, 4e-5], searched=False)
    assert db.measured_default(mod, default.trace) is None
    db.commit_tuning_record(default)
    assert db.measured_default(mod, default.trace) == pytest.approx(3e-5)
    assert db.measured_default(mod, record(db, mod, [1e-5]).trace) is None  # another trace
    assert db.measured_default(matmul(12), default.trace) is None  # another workload
    assert open_database(db_url, {"kind": "llvm", "num-cores": 1}).measured_default(mod, default.trace) is None
    db.record_checked(db.fastest_unchecked(mod).record_id, models.CHECK_WRONG, "wrong output")
    assert db.measured_default(mod, default.trace) is None


def test_final_times_pick_the_served_record_and_replace_the_last_final_timing(db_url: str) -> None:
    """The final timing (tuner/search/final_timing.py) compares a task's best searched records
    (distinct schedules), its default and the records the last final timing ranked; its times
    rank before every search time, and a new final timing replaces the last one's."""
    db = open_database(db_url, TARGET)
    mod = matmul(28)
    for variant, secs in enumerate([1e-4, 2e-4, 3e-4, 4e-4]):
        db.commit_tuning_record(record(db, mod, [secs], variant=variant))
    db.commit_tuning_record(record(db, mod, [1.5e-4], variant=0))  # the fastest schedule measured again
    db.commit_tuning_record(record(db, mod, [5e-4], searched=False))  # its default
    found = db.final_candidates(mod, 2)
    assert [(c.mean_run_secs, c.default) for c in found] == pytest.approx([(1e-4, False), (2e-4, False), (5e-4, True)])
    by_time = {c.mean_run_secs: c.record_id for c in found}

    # The second-fastest by the search is the fastest by the final timing: it is checked and served.
    db.record_final_times(mod, {by_time[1e-4]: 3e-4, by_time[2e-4]: 2.5e-4, by_time[5e-4]: 6e-4})
    assert db.fastest_unchecked(mod).record_id == by_time[2e-4]
    checked(db, mod)
    assert db.served_record_id(mod) == by_time[2e-4] and db.best(mod).mean_run_secs == pytest.approx(2.5e-4)
    assert mean_run_secs(db.query_tuning_record(mod, Target(TARGET), "main").run_secs) == pytest.approx(2e-4)
    # The search's population still comes from the search's times.
    assert mean_run_secs(db.get_top_k(db.commit_workload(mod), 1)[0].run_secs) == pytest.approx(1e-4)

    # A later search found a faster schedule: its final timing compares it with the last one's picks.
    db.commit_tuning_record(record(db, mod, [0.5e-4], variant=5))
    found = db.final_candidates(mod, 2)
    assert sorted(c.mean_run_secs for c in found) == pytest.approx([0.5e-4, 1e-4, 2e-4, 5e-4])
    new = next(c.record_id for c in found if c.mean_run_secs == pytest.approx(0.5e-4))
    db.record_final_times(mod, {new: 2e-4})
    with Session(db.engine) as session:
        finals = session.execute(select(models.TuningRecord.id, models.TuningRecord.final_secs)
                                 .where(models.TuningRecord.final_secs.is_not(None))).all()
    assert finals == [(new, pytest.approx(2e-4))]
    checked(db, mod)
    assert db.served_record_id(mod) == new
    # Final timing off: a search's times serve again.
    db.record_final_times(mod, {})
    checked(db, mod)
    assert db.served_record_id(mod) == new and db.best(mod).mean_run_secs == pytest.approx(0.5e-4)


def test_measured_history_is_every_usable_measurement_in_the_order_stored(db_url: str) -> None:
    """What bench/checkpoints.py rebuilds a search's pick at any point from: failed candidates,
    records a check rejected and other hardware's records are not in it; defaults are, marked."""
    db = open_database(db_url, TARGET)
    mod = matmul(36)
    for variant, secs in enumerate([[3e-4], [1e10], [1e-4], [2e-4]]):
        db.commit_tuning_record(record(db, mod, secs, variant=variant))
    db.commit_tuning_record(record(db, mod, [5e-4], searched=False))
    open_database(db_url, {"kind": "llvm", "num-cores": 1}).commit_tuning_record(record(db, mod, [0.5e-4], variant=5))
    db.record_checked(db.fastest_unchecked(mod).record_id, models.CHECK_WRONG, "wrong output")  # the 1e-4 one
    history = db.measured_history(mod)
    assert [(c.mean_run_secs, c.default) for c in history] == pytest.approx([(3e-4, False), (2e-4, False), (5e-4, True)])
    assert [c.record_id for c in history] == sorted(c.record_id for c in history)
    assert db.measured_history(matmul(44)) == []


def test_records_are_served_per_hardware_key(db_url: str) -> None:
    db = open_database(db_url, TARGET)
    mod = matmul(16)
    db.commit_tuning_record(record(db, mod, [1e-4]))
    checked(db, mod)
    other = open_database(db_url, {"kind": "llvm", "num-cores": 1})
    assert other.provenance.hardware_key != db.provenance.hardware_key
    assert other.best(mod) is None
    assert len(other) == 0


def test_failed_records_are_kept_but_never_served(db_url: str) -> None:
    db = open_database(db_url, TARGET)
    mod = matmul(8)
    db.commit_tuning_record(record(db, mod, [1e10]))
    assert len(db) == 1
    assert db.best(mod) is None
    assert db.get_top_k(db.commit_workload(mod), 5) == []


def test_structural_hash_fits_bigint() -> None:
    value = signed_shash(matmul(8))
    assert -(1 << 63) <= value < (1 << 63)


def _writer(url: str, writer: int, n: int, results) -> None:  # noqa: ANN001
    db = open_database(url, TARGET)
    mod = matmul(24)
    for i in range(n):  # distinct measurements: identical ones are deduplicated by design
        db.commit_tuning_record(record(db, mod, [1e-4 * (i + 1) + 1e-8 * writer]))
    results.put(n)


@pytest.mark.parametrize("writers", [2, 4])
def test_concurrent_writers_lose_nothing(db_url: str, writers: int) -> None:
    open_database(db_url, TARGET)  # migrate once, as `tuner db upgrade` would
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(db_url, w, 10, results)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    assert sum(results.get(timeout=5) for _ in procs) == 10 * writers
    db = open_database(db_url, TARGET)
    assert len(db) == 10 * writers
    with Session(db.engine) as session:
        assert session.scalar(select(func.count()).select_from(models.Workload)) == 1
    checked(db, matmul(24))
    assert db.best(matmul(24)).mean_run_secs == pytest.approx(1e-4)
    top = db.get_top_k(db.commit_workload(matmul(24)), 3)
    assert [mean_run_secs(r.run_secs) for r in top] == pytest.approx([1e-4, 1e-4 + 1e-8, 2e-4] if writers == 2
                                                                     else [1e-4, 1e-4 + 1e-8, 1e-4 + 2e-8])


def test_the_same_measurement_committed_twice_is_stored_once(db_url: str) -> None:
    db = open_database(db_url, TARGET)
    rec = record(db, matmul(16), [2e-4])
    db.commit_tuning_record(rec)
    db.commit_tuning_record(rec)
    db.commit_tuning_record(record(db, matmul(16), [3e-4]))
    assert len(db) == 2


def test_redact_url_hides_password() -> None:
    shown = redact_url("postgresql+psycopg://team:hunter2@db.example/tuning")
    assert "hunter2" not in shown and "team" in shown
