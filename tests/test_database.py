"""The SQL tuning database behaves as MetaSchedule's Database on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Schedule
from tvm.script import tirx as T
from tvm.target import Target

from tests.pg import fresh_pg_schema
from tuner.db import models
from tuner.db.database import mean_run_secs, signed_shash
from tuner.db.engine import redact_url
from tuner.pipeline import open_database

TARGET = {"kind": "llvm", "num-cores": 2}


def matmul(n: int):  # noqa: ANN201 - a TVMScript PrimFunc
    @T.prim_func(s_tir=True)
    def func(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (n, n), "float32")
        B = T.match_buffer(b, (n, n), "float32")
        C = T.match_buffer(c, (n, n), "float32")
        for i, j, k in T.grid(n, n, n):
            with T.sblock("C"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    C[vi, vj] = T.float32(0)
                C[vi, vj] = C[vi, vj] + A[vi, vk] * B[vk, vj]

    import tvm

    return tvm.IRModule({"main": func})


def record(db, mod, run_secs, target=TARGET) -> ms.database.TuningRecord:  # noqa: ANN001
    sch = Schedule(mod)
    i, _, _ = sch.get_loops(sch.get_sblock("C"))
    sch.parallel(i)
    workload = db.commit_workload(mod)
    return ms.database.TuningRecord(sch.trace, workload, run_secs, Target(target),
                                    ms.arg_info.ArgInfo.from_prim_func(mod["main"]))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> Iterator[str]:  # noqa: ANN001
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        with fresh_pg_schema() as url:
            yield url


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
    assert db.best_run_secs(mod) == pytest.approx(1e-4)
    # A second handle (another process, later run) sees the same data and can apply the trace.
    again = open_database(db_url, TARGET)
    best = again.query_tuning_record(mod, Target(TARGET), "main")
    assert best is not None and mean_run_secs(best.run_secs) == pytest.approx(1e-4)
    assert again.query_schedule(mod, Target(TARGET), "main") is not None
    assert len(again.get_all_tuning_records()) == 4


def test_records_are_served_per_hardware_key(db_url: str) -> None:
    db = open_database(db_url, TARGET)
    mod = matmul(16)
    db.commit_tuning_record(record(db, mod, [1e-4]))
    other = open_database(db_url, {"kind": "llvm", "num-cores": 1})
    assert other.provenance.hardware_key != db.provenance.hardware_key
    assert other.best_run_secs(mod) is None
    assert len(other) == 0


def test_failed_records_are_kept_but_never_served(db_url: str) -> None:
    db = open_database(db_url, TARGET)
    mod = matmul(8)
    db.commit_tuning_record(record(db, mod, [1e10]))
    assert len(db) == 1
    assert db.best_run_secs(mod) is None
    assert db.get_top_k(db.commit_workload(mod), 5) == []


def test_structural_hash_fits_bigint() -> None:
    value = signed_shash(matmul(8))
    assert -(1 << 63) <= value < (1 << 63)


def _writer(url: str, n: int, results) -> None:  # noqa: ANN001
    db = open_database(url, TARGET)
    mod = matmul(24)
    for i in range(n):
        db.commit_tuning_record(record(db, mod, [1e-4 * (i + 1)]))
    results.put(n)


@pytest.mark.parametrize("writers", [2, 4])
def test_concurrent_writers_lose_nothing(db_url: str, writers: int) -> None:
    open_database(db_url, TARGET)  # migrate once, as `tuner db upgrade` would
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(db_url, 10, results)) for _ in range(writers)]
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
    assert db.best_run_secs(matmul(24)) == pytest.approx(1e-4)


def test_redact_url_hides_password() -> None:
    shown = redact_url("postgresql+psycopg://team:hunter2@db.example/tuning")
    assert "hunter2" not in shown and "team" in shown
