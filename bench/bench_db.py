"""Benchmark of the tuning database on SQLite and PostgreSQL, ratios measured in one run:

1. lookup latency of the best record of one workload with 10,000 workloads stored (a fresh
   database handle per lookup, as a new `tuner run` process has: hash query, IRModule parse,
   structural equality, top-1 record);
2. commit throughput (records/s) with 1 and 4 concurrent writer processes;
3. `tuner run` on a model whose every task is in the database vs the same run at `--trials 0`
   on an empty database (the CLI in a subprocess, as users run it).

    python3 bench/bench_db.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/test \
        --out bench/results/db-2core.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from results_file import write_results
from tuner.hardware import machine


def _matmul(m: int, n: int, k: int):  # noqa: ANN202 - an IRModule
    import tvm
    from tvm import te

    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    return tvm.IRModule({"main": te.create_prim_func([a, b, c])})


def _record(db, mod, secs: float, target: dict):  # noqa: ANN001, ANN202 - a TuningRecord
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.schedule import Schedule
    from tvm.target import Target

    sch = Schedule(mod)
    sch.parallel(sch.get_loops(sch.get_sblock("C"))[0])
    return ms.database.TuningRecord(sch.trace, db.commit_workload(mod), [secs], Target(target),
                                    ms.arg_info.ArgInfo.from_prim_func(mod["main"]))


TARGET = {"kind": "llvm", "num-cores": 2}


def _fill(url: str, shapes: list[tuple[int, int, int]]) -> None:
    """10,000 workloads, one record each, written in bulk (the lookup is what is measured)."""
    from tuner.db import models
    from tuner.db.database import record_sha256, workload_row
    from tuner.pipeline import open_database

    db = open_database(url, TARGET)
    sample = _record(db, _matmul(4, 4, 4), 1e-4, TARGET).as_json()
    workloads, records = [], []
    for idx, (m, n, k) in enumerate(shapes, start=1):
        workloads.append(dict(id=idx + 1, **workload_row(_matmul(m, n, k))))
        trace, _, target, args = sample
        payload = [trace, [1e-4 * (1 + idx % 7)], target, args]
        records.append(dict(workload_id=idx + 1, hardware_key=db.provenance.hardware_key,
                            target_json=json.dumps(target), trace_json=json.dumps(trace),
                            args_info_json=json.dumps(args), run_secs_json=json.dumps(payload[1]),
                            mean_run_secs=payload[1][0], record_sha256=record_sha256(payload),
                            team="bench", private=False, tuner_version="bench", created_at=models.utcnow()))
    with db.engine.begin() as conn:
        conn.execute(models.Workload.__table__.insert(), workloads)
        conn.execute(models.TuningRecord.__table__.insert(), records)


def bench_lookup(url: str, shapes: list[tuple[int, int, int]], lookups: int) -> dict:
    from tuner.pipeline import open_database

    t0 = time.perf_counter()
    _fill(url, shapes)
    fill_s = time.perf_counter() - t0
    rng = random.Random(0)
    picks = rng.sample(shapes, lookups)
    mods = [_matmul(*s) for s in picks]
    cold, warm = [], []
    for mod in mods:
        db = open_database(url, TARGET)  # a new handle: nothing cached, as in a new process
        t0 = time.perf_counter()
        best = db.best(mod)
        cold.append(time.perf_counter() - t0)
        assert best is not None
        t0 = time.perf_counter()
        db.query_tuning_record(mod, None, "main")
        warm.append(time.perf_counter() - t0)
        db.engine.dispose()
    q = statistics.quantiles
    return {
        "workloads": len(shapes), "fill_seconds": round(fill_s, 1), "lookups": lookups,
        "cold_ms": {"median": statistics.median(cold) * 1e3, "p99": q(cold, n=100)[98] * 1e3},
        "warm_ms": {"median": statistics.median(warm) * 1e3, "p99": q(warm, n=100)[98] * 1e3},
    }


def _writer(url: str, writer: int, n: int, start, results) -> None:  # noqa: ANN001
    from tuner.pipeline import open_database

    db = open_database(url, TARGET)
    mods = [_matmul(16, 16, 16 + i) for i in range(8)]
    recs = [_record(db, mods[i % 8], 1e-4 + 1e-9 * (writer * n + i), TARGET) for i in range(n)]
    start.wait()
    t0 = time.perf_counter()
    for rec in recs:
        db.commit_tuning_record(rec)
    results.put(time.perf_counter() - t0)


def bench_commits(url: str, writers: int, per_writer: int) -> dict:
    from tuner.pipeline import open_database

    open_database(url, TARGET)  # migrate once
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, w, per_writer, start, results)) for w in range(writers)]
    for p in procs:
        p.start()
    time.sleep(8)  # let every writer import TVM and prepare its records
    t0 = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    assert all(p.exitcode == 0 for p in procs)
    total = writers * per_writer
    stored = len(open_database(url, TARGET))
    assert stored == total, (stored, total)
    return {"writers": writers, "records": total, "seconds": round(wall, 3), "records_per_second": total / wall}


def _cli(args: list[str], env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", *args, "--json"], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return elapsed, json.loads(proc.stdout)


def bench_cache_hit(model: str, trials: int, work: Path) -> dict:
    env = dict(os.environ)
    full, empty = f"sqlite:///{work / 'full.sqlite'}", f"sqlite:///{work / 'empty.sqlite'}"
    tune_s, tuned = _cli(["run", model, "--trials", str(trials), "--db", full, "--out", str(work / "tune")], env)
    hit_s, hit = _cli(["run", model, "--db", full, "--out", str(work / "hit")], env)
    if hit["tasks_from_db"] != hit["tasks"] or hit["trials"]:
        raise SystemExit(f"{trials} trials left tasks without a record ({hit['tasks_from_db']}/{hit['tasks']} "
                         "from the database): raise --trials")
    zero_s, zero = _cli(["run", model, "--trials", "0", "--db", empty, "--out", str(work / "zero")], env)
    return {
        "model": model, "tuning_trials": tuned["trials"], "tuning_run_seconds": round(tune_s, 1),
        "tasks": hit["tasks"], "cache_hit_tasks_from_db": hit["tasks_from_db"],
        "cache_hit_seconds": round(hit_s, 2), "trials0_empty_db_seconds": round(zero_s, 2),
        "cache_hit_vs_trials0": hit_s / zero_s,
        "latency_ms": {"cache_hit": hit["latency_ms"]["tuned"], "trials0": zero["latency_ms"]["tuned"]},
    }


def _pg_schema(base: str) -> tuple[str, str]:
    schema = f"tuner_bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return schema, f"{base}?options=-csearch_path%3D{schema}"


def _drop_pg_schema(base: str, schema: str) -> None:
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", help="PostgreSQL base URL (a fresh schema is created and dropped)")
    parser.add_argument("--workloads", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--records-per-writer", type=int, default=200)
    parser.add_argument("--model", default="zoo:squeezenet")
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    shapes = sorted({(16 * (1 + i % 25), 16 * (1 + (i // 25) % 20), 8 + i // 500) for i in range(args.workloads)})
    assert len(shapes) == args.workloads
    results: dict = {"host": platform.node(), "cpu": machine(), "python": platform.python_version(), "backends": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        backends = {"sqlite": lambda name: (None, f"sqlite:///{work / f'{name}.sqlite'}")}
        if args.pg:
            backends["postgresql"] = lambda name: _pg_schema(args.pg)
        for backend, make in backends.items():
            row: dict = {}
            for name, work_fn in (
                ("lookup", lambda url: bench_lookup(url, shapes, args.lookups)),
                ("commit_1_writer", lambda url: bench_commits(url, 1, args.records_per_writer)),
                ("commit_4_writers", lambda url: bench_commits(url, 4, args.records_per_writer)),
            ):
                schema, url = make(name)
                try:
                    row[name] = work_fn(url)
                finally:
                    if schema:
                        _drop_pg_schema(args.pg, schema)
                print(backend, name, json.dumps(row[name]), flush=True)
            results["backends"][backend] = row
        results["cache_hit"] = bench_cache_hit(args.model, args.trials, work)
        print("cache_hit", json.dumps(results["cache_hit"]), flush=True)
    print(json.dumps(results, indent=2))
    if args.out:
        write_results(results, args.out)


if __name__ == "__main__":
    main()
