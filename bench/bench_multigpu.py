"""Multi-GPU tuning: one job's CUDA measurements spread over 1, then 2 (... N) GPUs of this machine.

For each GPU count a local Ray is started that offers that many GPUs and as many units of the
GPU's hardware-key resource, so the job gets one runner actor per GPU; the same model, budget
and seed are tuned on an empty SQLite database each time. Prints and writes JSON: trials per
minute for each count, the scaling efficiency against one GPU, trials measured by each runner
(each GPU), and the tuned module's latency (is the module tuned on N GPUs as fast?).

    python3 bench/bench_multigpu.py --model zoo:resnet50 --trials 512 --gpus 1 2 \
        --out bench/results/multigpu-h200x2.json

Dry run of the plumbing on a CPU-only machine (one runner: a CPU node measures one at a time):
    python3 bench/bench_multigpu.py --target cpu --model zoo:squeezenet --trials 16 --gpus 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import ray

from tuner.cluster import ray_backend as rb
from tuner.cluster.nodes import hardware_units
from tuner.config import get_settings
from tuner.hardware import fingerprint_for, machine
from tuner.pipeline import RunRequest, run
from tuner.progress import LogProgress
from tuner.targets import parse_target
from results_file import write_results


def tune_on(gpus: int, model: str, target: dict, trials: int, work: Path, seed: int) -> dict:
    key = fingerprint_for(target).key
    cuda = target["kind"] == "cuda"
    available = hardware_units(target)
    if cuda and gpus > available:
        raise SystemExit(f"asked for {gpus} GPU(s); this machine has {available} of {key}")
    ray.init(address="local", num_gpus=gpus if cuda else 0, resources={rb.hardware_resource(key): gpus if cuda else 1},
             include_dashboard=False, log_to_driver=False, logging_level="WARNING", configure_logging=False)
    try:
        label = f"{gpus}-gpu"
        # ray_address is set: the pipeline finds this process already connected and uses it.
        request = RunRequest(model=model, target=target, trials=trials, out_dir=work / label,
                             db_url=f"sqlite:///{work / f'{label}.sqlite'}", ray_address="local",
                             measure_untuned=False, seed=seed)
        report = run(request, get_settings(), LogProgress(60))
    finally:
        ray.shutdown()
    cluster = report["cluster"]
    return {
        "gpus": gpus, "trials": report["trials"], "tuning_seconds": report["tuning_seconds"],
        "trials_per_minute": 60 * report["trials"] / max(report["tuning_seconds"], 1e-9),
        "runners": cluster.get("runners"), "trials_per_runner": cluster.get("trials_per_runner"),
        "tuned_ms": report["latency_ms"]["tuned"], "verified": report["verified"],
        "hardware": report["hardware"], "cluster": cluster,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:resnet50")
    parser.add_argument("--target", default="cuda")
    parser.add_argument("--trials", type=int, default=512)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="keep databases and modules here (default: a temp folder)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    target = parse_target(args.target)
    results: dict = {"model": args.model, "target": target, "trials_budget": args.trials, "host_cpu": machine(),
                     "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for gpus in args.gpus:
            row = tune_on(gpus, args.model, target, args.trials, work, args.seed)
            print(json.dumps(row), flush=True)
            results["runs"].append(row)
    base = results["runs"][0]
    for row in results["runs"]:
        speedup = row["trials_per_minute"] / base["trials_per_minute"]
        row["speedup_vs_first"] = speedup
        row["scaling_efficiency"] = speedup / (row["gpus"] / base["gpus"])
        row["tuned_ms_vs_first"] = row["tuned_ms"] / base["tuned_ms"]
        row["every_runner_measured"] = bool(row["trials_per_runner"]) and all(
            n > 0 for n in row["trials_per_runner"].values()) and len(row["trials_per_runner"]) == row["runners"]
    print(json.dumps(results, indent=2))
    if args.out:
        write_results(results, args.out)


if __name__ == "__main__":
    main()
