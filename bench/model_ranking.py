"""How well a database's trained cost model ranks the candidates a search measured, per task.

`bench_transfer.py` says whether a transferred search reaches a cold one's latency sooner; this
says why or why not: for each task of `model`, the Spearman rank correlation between the family
model's predicted throughput (the model stored in `start_db`, or trained there) and the measured
throughput of the records a run stored after that database state (a kept run copy, e.g. a cold
run of `bench_transfer.py --runs-dir`), over all of them and over the first `--first` (a cold
run's random first round: candidates no model picked). Tasks are listed by their share of the
run's best latency; the time-weighted means sum it up.

    python3 bench/model_ranking.py resnet50 /tmp/fill-r50.sqlite /tmp/runs/r50/resnet50-624-cold-0.sqlite
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from tvm.target import Target

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_transfer import target_tasks  # noqa: E402
from checkpoints import highest_record_id  # noqa: E402
from models import model_spec  # noqa: E402

from tuner.progress import SilentProgress  # noqa: E402
from tuner.schedules.cost_model import Measured, _spearman, _throughputs, cost_model, record_samples  # noqa: E402
from tuner.search.cost_model_training import start_model  # noqa: E402
from tuner.search.job_database import open_database  # noqa: E402
from tuner.targets import host_cpu_target  # noqa: E402


def ranking(model: object, task: object, candidates: list, target: Target) -> float | None:
    """Spearman of predicted vs measured throughput over `candidates` of `task` (None below 3)."""
    samples = record_samples([Measured(task.dispatched[0], c.record.trace, c.mean_run_secs, c.record.args_info)
                              for c in candidates], target)
    if not samples.groups:
        return None
    (features, costs), = samples.groups.values()
    return _spearman(model._predict(xs=features), _throughputs(costs)) if len(costs) >= 3 else None  # noqa: SLF001


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the model whose tasks were searched (a bench/models.py name)")
    parser.add_argument("start_db", type=Path, help="the database state the run started from (SQLite file)")
    parser.add_argument("run_db", type=Path, help="the run's database copy (SQLite file)")
    parser.add_argument("--first", type=int, default=8, help="the first N records of each task as a second set")
    args = parser.parse_args()
    for path in (args.start_db, args.run_db):
        if not path.is_file():  # opening it would create an empty database there
            raise SystemExit(f"no database at {path}")
    target = host_cpu_target()
    with tempfile.TemporaryDirectory(prefix="tuner-ranking-") as work:
        tasks, _ = target_tasks(model_spec(args.model, Path(work)), f"sqlite:///{args.start_db}", target)
    start = start_model(open_database(f"sqlite:///{args.start_db}", target), SilentProgress())
    if start.trained is None:
        raise SystemExit(f"{args.start_db}: no stored cost model of this hardware family")
    model = cost_model(int(target["num-cores"]), start.trained)
    base = highest_record_id(args.start_db)
    run = open_database(f"sqlite:///{args.run_db}", target)
    tvm_target = Target(dict(target))
    rows = []
    for task in tasks:
        own = sorted((c for c in run.measured_history(task.dispatched[0]) if c.record_id > base and np.isfinite(c.mean_run_secs)),
                     key=lambda c: c.record_id)
        best = min((c.mean_run_secs for c in own), default=0.0)
        rows.append((task.task_name, task.weight * best, len(own), ranking(model, task, own, tvm_target),
                     ranking(model, task, own[:args.first], tvm_target)))
    total = sum(r[1] for r in rows) or 1.0

    def shown(value: float | None) -> str:
        return "   - " if value is None else f"{value:+.2f}"

    for name, weighted, count, every, first in sorted(rows, key=lambda r: -r[1]):
        print(f"{name[:48]:48s} {weighted / total:6.1%} of the time, {count:3d} records: "
              f"spearman {shown(every)} all, {shown(first)} first {args.first}")
    for label, column in (("all records", 3), (f"first {args.first}", 4)):
        scored = [(r[1], r[column]) for r in rows if r[column] is not None]
        mean = sum(w * s for w, s in scored) / sum(w for w, _ in scored) if scored else float("nan")
        print(f"time-weighted mean spearman, {label}: {mean:+.2f}")


if __name__ == "__main__":
    main()
