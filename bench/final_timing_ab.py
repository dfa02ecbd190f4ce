"""What the final timing buys (tuner/search/final_timing.py): one search's records served by the
search's own times against the same records served after the final timing, and the defaults.

Tune first with the final timing off, so that the database holds only the search's times:

    TUNER_SEARCH__FINAL_TOP=0 tuner run zoo:squeezenet --trials 2176 --db sqlite:////tmp/a/db.sqlite --out /tmp/a/t
    python3 bench/final_timing_ab.py zoo:squeezenet sqlite:////tmp/a/db.sqlite --rounds 5 \\
        --out bench/results/final-timing-ab-squeezenet.json

The script copies the database, runs the final timing on the copy (every workload the copy
holds for this machine's hardware key, as a search's end does), compiles the model with
`--trials 0` from the original ("searched": the search's fastest records), from the copy
("final") and from an empty database ("defaults"), checks each against ONNX Runtime and times
them and ORT by turns in one process. SQLite databases only (the copy is a file copy).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from by_turns import round_line, verified_by_turns  # noqa: E402
from results_file import write_results  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402
from tvm.target import Target  # noqa: E402

from tuner.cluster.threads import use_threads  # noqa: E402
from tuner.config import get_settings  # noqa: E402
from tuner.hardware import machine  # noqa: E402
from tuner.load.model_io import load_model  # noqa: E402
from tuner.pipeline import RunRequest, run  # noqa: E402
from tuner.progress import SilentProgress  # noqa: E402
from tuner.search.final_timing import time_finalists  # noqa: E402
from tuner.search.job_database import open_database  # noqa: E402
from tuner.search.tuning import local_workers, tuning_cores  # noqa: E402
from tuner.targets import host_cpu_target  # noqa: E402
from tuner.verify.measure import TVMModel  # noqa: E402


def final_timing(db_url: str, target_dict: dict, settings) -> dict:  # noqa: ANN001 - Settings
    """The final timing of every workload the database holds for this target's hardware key."""
    target = Target(target_dict)
    database = open_database(db_url, target_dict, settings.team)
    tasks = [ms.ExtractedTask(f"workload {wid}", mod, target, [mod], 1) for wid, mod in database.stored_workloads()]
    workers = local_workers(settings, tuning_cores(target))
    try:
        return time_finalists(tasks, target, database, workers, settings, SilentProgress()).as_dict()
    finally:
        workers.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a path or zoo:NAME")
    parser.add_argument("db", help="sqlite:///PATH of a database tuned with TUNER_SEARCH__FINAL_TOP=0")
    parser.add_argument("--mcpu", help="LLVM CPU to compile for (default: this machine's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the modules by turns")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, help="keep the database copy and the modules here (default: a temporary folder)")
    args = parser.parse_args()
    source = Path(make_url(args.db).database or "")
    if make_url(args.db).get_backend_name() != "sqlite" or not source.is_file():
        parser.error(f"{args.db}: expected sqlite:///PATH of an existing file")
    target = host_cpu_target()
    if args.mcpu:
        target["mcpu"] = args.mcpu
    settings = get_settings()
    if settings.search.final_top == 0:
        settings = settings.model_copy(update={"search": settings.search.model_copy(update={"final_top": 4})})
    use_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="final-timing-ab-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        copy = work / "final.sqlite"
        shutil.copyfile(source, copy)
        timing = final_timing(f"sqlite:///{copy}", target, settings)
        for row in timing["per_task"]:
            print(f"{row['task']}: {row['candidates']} records, search's fastest {row['search_best_ms']:.4f} ms "
                  f"(final {row['search_best_final_ms'] or float('nan'):.4f}), final best {row['final_best_ms']:.4f}: "
                  f"{row['picked']}")
        print(f"final timing: {timing['tasks']} tasks, {timing['changed']} changed ({timing['to_default']} to the "
              f"default), {timing['seconds']:.1f} s")
        urls = {"searched": args.db, "final": f"sqlite:///{copy}", "defaults": f"sqlite:///{work / 'empty.sqlite'}"}
        paths = {}
        for label, url in urls.items():
            report = run(RunRequest(model=args.model, target=target, trials=0, out_dir=work / label, db_url=url),
                         settings)
            paths[label] = report["artifact"]["path"]
        loaded = load_model(args.model, {})
        modules = {label: TVMModel(Path(path), list(loaded.input_shapes)) for label, path in paths.items()}

        timed = verified_by_turns(loaded, modules, args.threads, args.rounds, 3.0,
                                  lambda *a: print(round_line(*a), flush=True))
        rows, ort_ms = timed.modules, timed.onnxruntime_ms
    for label, row in rows.items():
        row["median_vs_searched"] = statistics.median(a / b for a, b in zip(row["ms"], rows["searched"]["ms"]))
        row["median_vs_onnxruntime"] = statistics.median(a / o for a, o in zip(row["ms"], ort_ms))
        print(f"{label}: median {statistics.median(row['ms']):.3f} ms, / searched {row['median_vs_searched']:.3f}, "
              f"/ ORT {row['median_vs_onnxruntime']:.3f}, max abs error {row['max_abs_error']:.1e}")
    if args.out:
        write_results({"cpu": machine(), "model": args.model, "target": target, "db": args.db,
                       "final_timing": timing, "modules": rows, "onnxruntime_ms": ort_ms,
                       "core_round_trip_ns": timed.core_round_trip_ns,
                       "settings": {"final_top": settings.search.final_top,
                                    "final_rounds": settings.search.final_rounds}}, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
