"""Benchmark: does a cost model trained on the database make the next model tune faster?

Tunes the `--train-models` into an empty database (this CPU), trains the hardware family's cost
model on their records, then tunes each `--target-models` model twice from copies of that same
database state, with the trained model as the search's starting model and without it (same
budget, same seed). Prints, per target model, the estimated latency (sum over tasks of weight x
best measured kernel time, what the progress bar shows) after every batch for both runs, the
measured latency of both modules, and how many trials the transferred run needed to reach the
cold run's final estimate. Curves go to a plot beside the JSON.

    python3 bench/bench_transfer.py --train-models squeezenet shufflenet densenet121 inception_v1 \\
        bvlc_alexnet zfnet512 --target-models resnet50 transformer --trials-per-task 32 \\
        --out bench/results/transfer.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import model_source, task_count  # noqa: E402

from tuner.config import get_settings  # noqa: E402
from tuner.cost_model_training import train_family  # noqa: E402
from tuner.db import cost_models as store  # noqa: E402
from tuner.hardware import machine  # noqa: E402
from tuner.pipeline import RunRequest, open_database, run  # noqa: E402
from tuner.progress import LogProgress  # noqa: E402
from tuner.targets import host_cpu_target  # noqa: E402


class Curve(LogProgress):
    """Log lines, and every (trials, estimated latency) point the search reports."""

    def __init__(self) -> None:
        super().__init__(30)
        self.points: list[tuple[int, float]] = []

    def advance(self, trials_done: int, best_ms: float | None) -> None:
        super().advance(trials_done, best_ms)
        if best_ms is not None:
            self.points.append((trials_done, best_ms))


def trials_to_reach(points: list[tuple[int, float]], goal: float) -> int | None:
    return next((t for t, ms in points if ms <= goal * 1.0001), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-models", nargs="+", default=["squeezenet", "shufflenet", "densenet121",
                                                               "inception_v1", "bvlc_alexnet", "zfnet512"])
    parser.add_argument("--target-models", nargs="+", default=["resnet50", "transformer"])
    parser.add_argument("--trials-per-task", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/transfer.json"))
    args = parser.parse_args()
    target = host_cpu_target()
    base = get_settings()
    # Retraining is done here, once, where the benchmark says: never in the background meanwhile.
    settings = base.model_copy(update={"cost_model": base.cost_model.model_copy(
        update={"retrain_after_records": 10**9})})
    results: dict = {"cpu": machine(), "platform": platform.platform(), "trials_per_task": args.trials_per_task,
                     "train_models": args.train_models, "targets": []}
    with tempfile.TemporaryDirectory(prefix="tuner-transfer-") as tmp:
        work = Path(tmp)
        db_file = work / "shared.sqlite"
        url = f"sqlite:///{db_file}"
        t0 = time.perf_counter()
        for name in args.train_models:
            source = model_source(name, work)
            budget = args.trials_per_task * task_count(source, target)
            run(RunRequest(model=source, target=target, trials=budget, out_dir=work / name, db_url=url,
                           seed=args.seed, measure_untuned=False, name=name), settings, LogProgress(30))
        results["fill_seconds"] = time.perf_counter() - t0
        db = open_database(url, target)
        t0 = time.perf_counter()
        model = train_family(db.engine, db.provenance.family, store.SHARED, int(target["num-cores"]),
                             settings.cost_model.min_records)
        results["model"] = {**model, "seconds": time.perf_counter() - t0}
        print(f"[bench] trained on {model['records']} records of {model['workloads']} workloads, hold-out rank "
              f"correlation {model['holdout_spearman']}", flush=True)
        for name in args.target_models:
            source = model_source(name, work)
            budget = args.trials_per_task * task_count(source, target)
            row: dict = {"model": name, "trials": budget}
            for label, transfer in (("transferred", True), ("cold", False)):
                copy = work / f"{name}-{label}.sqlite"
                shutil.copy(db_file, copy)
                curve = Curve()
                run_settings = settings.model_copy(update={"cost_model": settings.cost_model.model_copy(
                    update={"transfer": transfer})})
                report = run(RunRequest(model=source, target=target, trials=budget, out_dir=work / f"{name}-{label}",
                                        db_url=f"sqlite:///{copy}", seed=args.seed, measure_untuned=False, name=name),
                             run_settings, curve)
                row[label] = {"curve": curve.points, "final_estimate_ms": curve.points[-1][1] if curve.points else None,
                              "latency_ms": report["latency_ms"]["tuned"], "onnxruntime_ms": report["latency_ms"]["onnxruntime"],
                              "tuning_seconds": report["tuning_seconds"], "cost_model": report["cost_model"]}
            goal = row["cold"]["final_estimate_ms"]
            reached = trials_to_reach(row["transferred"]["curve"], goal) if goal else None
            row["trials_to_reach_cold_final"] = {"transferred": reached, "cold": trials_to_reach(row["cold"]["curve"], goal)}
            row["trial_share_needed"] = (reached / row["trials_to_reach_cold_final"]["cold"]
                                         if reached and row["trials_to_reach_cold_final"]["cold"] else None)
            print(f"[bench] {name}: transferred {row['transferred']['latency_ms']:.2f} ms "
                  f"(estimate {row['transferred']['final_estimate_ms']:.3f}), cold {row['cold']['latency_ms']:.2f} ms "
                  f"(estimate {goal:.3f}); trials to reach the cold run's final estimate: "
                  f"{reached} transferred vs {row['trials_to_reach_cold_final']['cold']} cold", flush=True)
            results["targets"].append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["targets"]
    fig, axes = plt.subplots(1, len(rows), figsize=(6 * len(rows), 4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        for label in ("transferred", "cold"):
            points = row[label]["curve"]
            ax.plot([t for t, _ in points], [ms for _, ms in points], label=label, drawstyle="steps-post")
        ax.set_title(f"{row['model']} ({results['trials_per_task']} trials/task)")
        ax.set_xlabel("trials")
        ax.set_ylabel("estimated latency (ms)")
        ax.legend()
    fig.suptitle(f"cost model trained on {', '.join(results['train_models'])}: {results['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
