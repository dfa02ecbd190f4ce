"""Benchmark: per model, a cold tuning run on an empty database, then the same run again (every
task a cache hit), and each kernel of the tuned module timed alone against this CPU's measured
FMA peak. Prints ratios measured in one process and writes them as JSON.

    python3 bench/bench.py --models squeezenet resnet50 shufflenet transformer \\
        --trials-per-task 64 --out bench/results/cpu.json
    python3 bench/bench.py --trials 0        # default schedules only (a cache miss)

`transformer` is bench/transformer.py's encoder (seq 128, hidden 256, 2 layers), `mobilenetv2`
bench/mobilenet.py's MobileNetV2 (224x224, ReLU6 as Clip); the others
are the onnx package's light zoo models.

The VMs here move their two vCPUs between cores that share an L3 and cores that do not, and the
peak and a kernel alone move up to 2x with it: one resnet50 1x1 convolution read 1.51 ms in one
table and 0.69-0.71 ms by turns later (AMD EPYC znver3); peaks of 102 and 128 GFLOP/s against
185-203 in other runs put kernels above 100%. So each kernel table is timed by turns
(`--kernel-rounds`, 5): every round measures the cores' cache-line round trip (`core_latency.py`:
~100 ns on one L3, 400-1000 on two) and the FMA peak, then times every kernel once; a kernel's %
of the peak is its rate over its own round's peak, and the table shows the median of the rounds
beside each round's figure. The round trip does not tell every state apart (a 102 GFLOP/s peak
was measured at 89 ns, as if the two vCPUs ran on one physical core); the round's peak does.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table
from tvm.target import Target

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core_latency import round_trip_ns  # noqa: E402
from kernels import cpu_target, kernel_rounds  # noqa: E402
from peak import fma_peak_timer  # noqa: E402
from results_file import write_results  # noqa: E402
from models import model_spec  # noqa: E402

from tuner.config import Settings, get_settings  # noqa: E402
from tuner.hardware import fingerprint_for  # noqa: E402
from tuner.pipeline import RunRequest, run  # noqa: E402
from tuner.progress import LogProgress  # noqa: E402
from tuner.schedules.isa import vector_isa  # noqa: E402
from tuner.targets import host_cpu_target  # noqa: E402


def task_count(source: str, target: dict) -> int:
    from tvm.s_tir import meta_schedule as ms

    from tuner.rewrite.graph import fuse_for_tuning, import_onnx
    from tuner.load.model_io import load_model

    t = Target(dict(target))
    return len(ms.relax_integration.extract_tasks(fuse_for_tuning(import_onnx(load_model(source, {})), t), t))


def bench_settings(**cost_model: object) -> Settings:
    """The configured settings with no cost-model retraining in the background (it would run
    beside the benchmark's next timing or search), and these `cost_model` fields changed."""
    base = get_settings()
    update = {"retrain_after_records": 10**9, **cost_model}
    return base.model_copy(update={"cost_model": base.cost_model.model_copy(update=update)})


def bench_model(name: str, trials: int | None, per_task: int, work: Path, seed: int, peak: Callable[[], float],
                target: dict, table_rounds: int) -> dict:
    source = model_spec(name, work)
    db = f"sqlite:///{work / f'{name}.sqlite'}"
    settings = bench_settings()
    budget = trials if trials is not None else per_task * task_count(source, target)
    t0 = time.perf_counter()
    cold = run(RunRequest(model=source, target=target, trials=budget, out_dir=work / name / "cold",
                          db_url=db, seed=seed, name=name), settings, LogProgress(30))
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = run(RunRequest(model=source, target=target, trials=budget, out_dir=work / name / "warm",
                          db_url=db, seed=seed, measure_untuned=False, name=name), settings, LogProgress(30))
    warm_s = time.perf_counter() - t0
    lat = cold["latency_ms"]
    kernels = kernel_rounds(source, target, db, peak, rounds=table_rounds)
    return {
        "model": name,
        "trials_budget": budget,
        "trials": cold["trials"],
        "tasks": cold["tasks"],
        "tasks_tuned": cold["tasks_tuned"],
        "tasks_default_schedule": cold["tasks_default_schedule"],
        "tuning_seconds": cold["tuning_seconds"],
        # Record checks after the search (part of tuning_seconds): the cost of never serving a
        # wrong schedule, per tuned task and as a share of the tuning time.
        "check_seconds": cold["record_checks"]["seconds"],
        "checks": {k: v for k, v in cold["record_checks"].items() if k != "rejected"},
        "check_seconds_per_tuned_task": cold["record_checks"]["seconds"] / max(1, cold["tasks_tuned"]),
        "check_share_of_tuning": (cold["record_checks"]["seconds"] / cold["tuning_seconds"]
                                  if cold["tuning_seconds"] else None),
        "latency_ms": lat,
        "tuned_vs_untuned": lat["untuned"] / lat["tuned"],
        "tuned_vs_onnxruntime": lat["tuned"] / lat["onnxruntime"],
        "threads": cold["threads"],
        "fast_math": cold["fast_math"],
        "winograd_kernels": cold.get("winograd_kernels"),
        "max_abs_error": cold["max_abs_error"],
        "verified": cold["verified"],
        "cold_run_seconds": cold_s,
        "cache_hit_run_seconds": warm_s,
        "cache_hit_trials": warm["trials"],
        "cache_hit_tasks_from_db": warm["tasks_from_db"],
        "cache_hit_tuned_ms": warm["latency_ms"]["tuned"],
        # The cache-hit run times the same module against ONNX Runtime again: a second ratio.
        "cache_hit_onnxruntime_ms": warm["latency_ms"]["onnxruntime"],
        "cache_hit_tuned_vs_onnxruntime": warm["latency_ms"]["tuned"] / warm["latency_ms"]["onnxruntime"],
        "kernels": kernels["kernels"],
        "kernel_rounds": kernels["rounds"],
        "hardware": cold["hardware"],
    }


def _ns(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["squeezenet", "resnet50", "shufflenet", "transformer"])
    parser.add_argument("--trials", type=int, default=None, help="budget per model (overrides --trials-per-task)")
    parser.add_argument("--trials-per-task", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kernels", type=int, default=6, help="slowest kernels shown per model")
    parser.add_argument("--kernel-rounds", type=int, default=5,
                        help="rounds of the kernel tables: each round measures the peak again, then every kernel")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu.json"))
    parser.add_argument("--work", type=Path,
                        help="keep the models, databases (<model>.sqlite) and modules here (e.g. for module_profile.py)")
    parser.add_argument("--mcpu", help="generate code for this LLVM CPU instead of the host's (e.g. znver3 on an "
                        "AVX-512 host: AVX2 code, 16 vector registers; ONNX Runtime keeps the host's kernels)")
    args = parser.parse_args()
    target = cpu_target(args.mcpu)
    isa = vector_isa(Target(dict(target)))
    peak_timer = fma_peak_timer(Target(dict(target)), int(target["num-cores"]))
    peak = peak_timer()
    peak_round_trip = round_trip_ns()
    fp = fingerprint_for(target)
    cpu = f"{fp.as_dict().get('cpu_model')} ({target['mcpu']}, {isa.name}, {target['num-cores']} cores)"
    if args.mcpu:
        cpu += f", code generated for {args.mcpu} on a {host_cpu_target()['mcpu']} host"
    console = Console(width=170)
    console.print(f"{cpu}: measured FP32 FMA peak {peak:.1f} GFLOP/s (cores' round trip {_ns(peak_round_trip)} ns)")
    rows: list[dict] = []
    budget = f"{args.trials} trials" if args.trials is not None else f"{args.trials_per_task} trials per task"

    def write() -> None:  # after every model: a long run cut short keeps what it measured
        write_results({
            "budget": budget, "cpu": cpu, "isa": isa.name, "fma_peak_gflops": peak,
            "fma_peak_core_round_trip_ns": peak_round_trip,
            "python": sys.version.split()[0], "platform": platform.platform(), "results": rows,
        }, args.out)

    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        if args.work:
            args.work.mkdir(parents=True, exist_ok=True)
            tmp = str(args.work)
        for name in args.models:
            rows.append(bench_model(name, args.trials, args.trials_per_task, Path(tmp), args.seed, peak_timer, target,
                                    args.kernel_rounds))
            write()
            r = rows[-1]
            print(f"[bench] {name}: tuned {r['latency_ms']['tuned']:.2f} ms, ORT {r['latency_ms']['onnxruntime']:.2f} ms "
                  f"(tuned/ORT {r['tuned_vs_onnxruntime']:.3f}); cache-hit run {r['cache_hit_tuned_ms']:.2f} ms, "
                  f"ORT {r['cache_hit_onnxruntime_ms']:.2f} (tuned/ORT {r['cache_hit_tuned_vs_onnxruntime']:.3f})", flush=True)
    table = Table(title=f"tuner on {cpu}, {budget}, peak {peak:.0f} GFLOP/s")
    for col in ("model", "trials", "untuned ms", "tuned ms", "ORT ms", "tuned/ORT", "tuned/untuned",
                "tuning s", "checks s (share)", "cold run s", "cache-hit run s"):
        table.add_column(col, justify="right")
    for r in rows:
        lat = r["latency_ms"]
        table.add_row(r["model"], str(r["trials"]), f"{lat['untuned']:.2f}", f"{lat['tuned']:.2f}",
                      f"{lat['onnxruntime']:.2f}", f"{r['tuned_vs_onnxruntime']:.2f}",
                      f"{1 / r['tuned_vs_untuned']:.3f}", f"{r['tuning_seconds']:.0f}",
                      f"{r['check_seconds']:.1f}" + (f" ({r['check_share_of_tuning']:.1%})"
                                                      if r["check_share_of_tuning"] is not None else ""),
                      f"{r['cold_run_seconds']:.0f}", f"{r['cache_hit_run_seconds']:.0f}")
    console.print(table)
    for r in rows:
        rounds = r["kernel_rounds"]
        states = ", ".join(f"{x['peak_gflops']:.0f} GFLOP/s at {_ns(x['core_round_trip_ns'])} ns" for x in rounds)
        kt = Table(title=f"{r['model']}: slowest kernels, each timed alone in {len(rounds)} rounds by turns "
                         f"(each round's peak and cores' round trip: {states}); medians of the rounds")
        for col in ("kernel", "calls", "GFLOP", "ms", "cold ms", "GFLOP/s", "% of round's peak", "% per round",
                    "micro-kernel"):
            kt.add_column(col, justify="right")
        for k in r["kernels"][:args.kernels]:
            kt.add_row(k["kernel"], str(k["calls"]), f"{k['gflop']:.3f}", f"{k['ms']:.3f}", f"{k['cold_ms']:.3f}",
                       f"{k['gflops_per_s']:.1f}", f"{k['pct_of_peak']:.0f}",
                       " ".join(f"{p:.0f}" for p in k["pct_of_peak_rounds"]), "yes" if k["register_blocked"] else "")
        console.print(kt)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
