"""A CPU rewrite or rule choice on or off: each model compiled on default schedules (a `--trials 0`
cache miss) both ways, both verified against ONNX Runtime, then both modules and ONNX Runtime
timed in alternation in one process (this VM's speed swings within a minute: only ratios of one
run mean anything).

    python3 bench/defaults_ab.py --without a-stationary shufflenet --mcpu znver3 \\
        --out bench/results/a-stationary-avx2.json

`--without` names the switch (`bench/switches.py`); a kernel-level A/B (`bench/block_order.py`)
times the kernels that change, this one whole modules, which also shows what a change does to the
kernels around them (how Relax fuses a rewritten graph). `--mcpu znver3` compiles AVX2 code on an AVX-512 CPU
(ONNX Runtime then still uses this CPU's widest vectors: compare the two modules, and ORT only
within a target). `--tune N` compares tuned modules instead: the model is first tuned at N trials
per task with the feature on, then off, into one database (the kernels both share tuned once).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tvm.target import Target

sys.path.insert(0, str(Path(__file__).resolve().parent))

from by_turns import verified_by_turns  # noqa: E402
from kernels import cpu_target, model_on_database  # noqa: E402
from models import model_spec  # noqa: E402
from results_file import write_results  # noqa: E402
from switches import SWITCHES, without  # noqa: E402

from tuner.cluster.threads import use_threads  # noqa: E402
from tuner.compile import compile_tuned  # noqa: E402
from tuner.hardware import machine  # noqa: E402
from tuner.rewrite.graph import fuse_for_tuning, import_onnx  # noqa: E402
from tuner.verify.measure import TVMModel  # noqa: E402


def tune_both(source: str, switch: str, per_task: int, work: Path, target: dict) -> dict:
    """`source` tuned into one database with the feature on, then off, at `per_task` trials per
    task that is not in the database yet: the kernels both variants share are tuned once (a
    cache hit the second time), the ones the feature changes once per variant, each with the
    same trials."""
    from tvm.s_tir import meta_schedule as ms

    from bench import bench_settings

    from tuner.pipeline import RunRequest, run
    from tuner.progress import LogProgress

    url = f"sqlite:///{work / 'tuned.sqlite'}"
    tuning = {}
    for label, off in (("with", None), ("without", switch)):
        with without(off):
            _, fused, db = model_on_database(source, target, url)
            tasks = ms.relax_integration.extract_tasks(fused, Target(dict(target)))
            budget = per_task * sum(not db.has_workload(t.dispatched[0]) for t in tasks)
            report = run(RunRequest(model=source, target=target, trials=budget, out_dir=work / label, db_url=url,
                                    measure_untuned=False, name=label), bench_settings(), LogProgress(60))
        tuning[label] = {"trials": budget, "tasks_tuned": report["tasks_tuned"],
                         "tuning_seconds": report["tuning_seconds"]}
    return {"db": url, "tuning": tuning}


def compare_model(name: str, switch: str, work: Path, target: dict, rounds: int, tune: int = 0) -> dict:
    tgt = Target(dict(target))
    use_threads(int(target["num-cores"]))
    work.mkdir(parents=True, exist_ok=True)
    source = model_spec(name, work)
    tuned = tune_both(source, switch, tune, work, target) if tune else {}
    loaded, fused_on, db = model_on_database(source, target, tuned.get("db", f"sqlite:///{work / 'empty.sqlite'}"))
    row: dict = {"model": name, **({"tuned_trials_per_task": tune, "tuning": tuned["tuning"]} if tune else {})}
    modules = {}
    for label, off in (("with", None), ("without", switch)):
        # Compiled inside the switch too: most switches act when the default schedules are made
        # (register_blocking), not when the graph is fused. (From a34c4e5 to session 39 only the
        # fusion was, so those switches compared a module with itself.)
        with without(off):
            fused = fused_on if off is None else fuse_for_tuning(import_onnx(loaded), tgt)
            modules[label] = TVMModel(compile_tuned(fused, tgt, db).executable, list(loaded.input_shapes))
    timed = verified_by_turns(loaded, modules, int(target["num-cores"]), rounds, 5.0)
    row.update(timed.modules)
    row["onnxruntime_ms"], row["core_round_trip_ns"] = timed.onnxruntime_ms, timed.core_round_trip_ns
    ratios = [a / b for a, b in zip(row["with"]["ms"], row["without"]["ms"])]
    row["with_vs_without"] = ratios
    print(f"[ab] {name}: with {switch} " + ", ".join(f"{a:.2f}" for a in row["with"]["ms"]) + " ms, without "
          + ", ".join(f"{b:.2f}" for b in row["without"]["ms"]) + " ms (with/without "
          + ", ".join(f"{r:.3f}" for r in ratios) + "), ORT " + ", ".join(f"{o:.2f}" for o in row["onnxruntime_ms"])
          + " ms; cores' round trip " + ", ".join("?" if c is None else f"{c:.0f}" for c in row["core_round_trip_ns"])
          + f" ns; max abs error {row['with']['max_abs_error']:.1e} / {row['without']['max_abs_error']:.1e}",
          flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--without", required=True, choices=sorted(SWITCHES))
    parser.add_argument("--mcpu", help="compile for another CPU (e.g. znver3: AVX2 code on an AVX-512 CPU)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timings of the three, one after the other")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tune", type=int, default=0, metavar="TRIALS_PER_TASK",
                        help="compare tuned modules: both variants tuned into one database first")
    args = parser.parse_args()
    target = cpu_target(args.mcpu)
    with tempfile.TemporaryDirectory(prefix="tuner-ab-") as tmp:
        results = {"cpu": machine(), "mcpu": target.get("mcpu"), "without": args.without,
                   "models": [compare_model(n, args.without, Path(tmp) / n, target, args.rounds, args.tune)
                              for n in args.models]}
    if args.out:
        write_results(results, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
