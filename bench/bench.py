"""Benchmark: per zoo model, a cold tuning run on an empty database, then the same run again
(every task a cache hit). Prints ratios measured in one process and writes them as JSON.

    python3 bench/bench.py --models squeezenet resnet50 --trials 256 --out bench/results/cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tuner.config import get_settings
from tuner.pipeline import RunRequest, run
from tuner.progress import LogProgress
from tuner.targets import host_cpu_target


def bench_model(name: str, trials: int, work: Path, seed: int) -> dict:
    db = f"sqlite:///{work / f'{name}.sqlite'}"
    target = host_cpu_target()
    settings = get_settings()
    t0 = time.perf_counter()
    cold = run(RunRequest(model=f"zoo:{name}", target=target, trials=trials, out_dir=work / name / "cold",
                          db_url=db, seed=seed), settings, LogProgress(30))
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = run(RunRequest(model=f"zoo:{name}", target=target, trials=trials, out_dir=work / name / "warm",
                          db_url=db, seed=seed, measure_untuned=False), settings, LogProgress(30))
    warm_s = time.perf_counter() - t0
    lat = cold["latency_ms"]
    return {
        "model": name,
        "trials_budget": trials,
        "trials": cold["trials"],
        "tasks": cold["tasks"],
        "tasks_tuned": cold["tasks_tuned"],
        "tasks_default_schedule": cold["tasks_default_schedule"],
        "tuning_seconds": cold["tuning_seconds"],
        "latency_ms": lat,
        "tuned_vs_untuned": lat["untuned"] / lat["tuned"],
        "tuned_vs_onnxruntime": lat["onnxruntime"] / lat["tuned"],
        "cold_run_seconds": cold_s,
        "cache_hit_run_seconds": warm_s,
        "cache_hit_trials": warm["trials"],
        "cache_hit_tasks_from_db": warm["tasks_from_db"],
        "cache_hit_tuned_ms": warm["latency_ms"]["tuned"],
        "hardware": cold["hardware"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["squeezenet", "resnet50"])
    parser.add_argument("--trials", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        for name in args.models:
            rows.append(bench_model(name, args.trials, Path(tmp), args.seed))
    table = Table(title=f"tuner on {rows[0]['hardware']['cpu_model']} ({platform.machine()}), budget {args.trials} trials")
    for col in ("model", "untuned ms", "tuned ms", "ORT ms", "tuned/untuned", "ORT/tuned",
                "tuning s", "cold run s", "cache-hit run s"):
        table.add_column(col, justify="right")
    for r in rows:
        lat = r["latency_ms"]
        table.add_row(r["model"], f"{lat['untuned']:.2f}", f"{lat['tuned']:.2f}", f"{lat['onnxruntime']:.2f}",
                      f"{r['tuned_vs_untuned']:.1f}x faster", f"{r['tuned_vs_onnxruntime']:.2f}",
                      f"{r['tuning_seconds']:.0f}", f"{r['cold_run_seconds']:.0f}", f"{r['cache_hit_run_seconds']:.0f}")
    Console(width=160).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"trials": args.trials, "python": sys.version.split()[0], "results": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
