"""Benchmark: tuning throughput on one machine with the in-process workers vs Ray (the default
builders, 1 and 2 builder actors, and 2 searcher actors that split the tasks), the same model, budget and seed,
each on an empty database; plus the per-candidate cost that Ray dispatch adds to a build.
Prints and writes JSON.

    python3 bench/bench_ray.py --model zoo:squeezenet --trials 64 --out bench/results/ray-2core.json
    python3 bench/bench_ray.py --configs local,ray-2-searchers --no-dispatch --out ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tuner.config import get_settings
from tuner.hardware import machine
from tuner.pipeline import RunRequest, run
from tuner.progress import LogProgress
from tuner.targets import host_cpu_target
from results_file import write_results


CONFIGS = {  # label: (ray address, builders, searchers)
    "local": ("off", None, None),
    "ray": ("local", None, None),  # what `tuner run` does by default: one builder per CPU
    "ray-1-builder": ("local", 1, None),
    "ray-2-builders": ("local", 2, None),
    "ray-2-searchers": ("local", None, 2),
}


def tune_once(model: str, trials: int, work: Path, label: str, ray_address: str | None, workers: int | None,
              searchers: int | None) -> dict:
    settings = get_settings()
    request = RunRequest(model=model, target=host_cpu_target(), trials=trials, out_dir=work / label,
                         db_url=f"sqlite:///{work / f'{label}.sqlite'}", ray_address=ray_address,
                         workers=workers, measure_untuned=False, searchers=searchers)
    report = run(request, settings, LogProgress(60))
    secs = report["cluster"]["seconds"]
    return {
        "config": label, "trials": report["trials"], "tuning_seconds": report["tuning_seconds"],
        "total_seconds": report["total_seconds"],
        "trials_per_minute": 60 * report["trials"] / report["tuning_seconds"],
        "per_trial_ms": {k: 1000 * v / max(1, report["trials"]) for k, v in secs.items()},
        "seconds": secs, "cluster": report["cluster"], "tuned_ms": report["latency_ms"]["tuned"],
    }


def dispatch_overhead(candidates: int) -> dict:
    """Build the same kernels through one local worker process and through one Ray actor."""
    import ray
    import tvm
    from tvm import te
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.target import Target

    from tuner.cluster import ray_backend as rb
    from tuner.cluster.local import LocalBuilder

    def mod(n: int) -> tvm.IRModule:
        a = te.placeholder((n, n), name="A")
        b = te.compute((n, n), lambda i, j: a[i, j] * 2.0 + 1.0, name="B")
        return tvm.IRModule({"main": te.create_prim_func([a, b])})

    target = Target({"kind": "llvm", "num-cores": 1})
    inputs = [BuilderInput(mod(16 + i), target) for i in range(candidates)]
    local = LocalBuilder(1, 60)
    local.pool.start()
    local.build(inputs[:2])  # warm
    t0 = time.perf_counter()
    local.build(inputs)
    local_ms = 1000 * (time.perf_counter() - t0) / candidates
    local.close()

    rb.connect(None, {})
    try:
        store = rb.ArtifactStore()
        builder = rb.RayBuilder(1, 60, store)
        builder.build(inputs[:2])
        t0 = time.perf_counter()
        builder.build(inputs)
        ray_ms = 1000 * (time.perf_counter() - t0) / candidates
        actor = builder.actors[0]
        ray.get(actor.ready.remote())
        trips = []
        for _ in range(200):
            t0 = time.perf_counter()
            ray.get(actor.ready.remote())
            trips.append(1000 * (time.perf_counter() - t0))
        builder.close()
        store.close()
    finally:
        rb.disconnect()
    return {"candidates": candidates, "local_build_ms": local_ms, "ray_build_ms": ray_ms,
            "ray_overhead_ms_per_candidate": ray_ms - local_ms,
            "ray_actor_call_round_trip_ms": statistics.median(trips)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:squeezenet")
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--no-dispatch", action="store_true", help="skip the dispatch-overhead measurement")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the configs this many times, interleaved (a shared VM's speed drifts "
                             "by 15-30%% between runs); ratios compare medians")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    labels = list(dict.fromkeys(c.strip() for c in args.configs.split(",") if c.strip()))
    unknown = sorted(set(labels) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown config(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    results: dict = {"model": args.model, "cpu": machine(), "trials_budget": args.trials, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            work = Path(tmp) / f"round-{r}"  # every run on an empty database of its own
            work.mkdir()
            for label in labels:
                row = tune_once(args.model, args.trials, work, label, *CONFIGS[label])
                row["round"] = r
                print(json.dumps(row), flush=True)
                results["runs"].append(row)
    if not args.no_dispatch:
        results["dispatch"] = dispatch_overhead(64)
        print(json.dumps(results["dispatch"]), flush=True)
    median = {label: {key: statistics.median(run[key] for run in results["runs"] if run["config"] == label)
                      for key in ("trials_per_minute", "tuning_seconds", "total_seconds")} for label in labels}
    results["median"] = median
    results[f"ratio_vs_{labels[0]}"] = {label: m["trials_per_minute"] / median[labels[0]]["trials_per_minute"]
                                        for label, m in median.items()}
    print(json.dumps(results, indent=2))
    if args.out:
        write_results(results, args.out)


if __name__ == "__main__":
    main()
