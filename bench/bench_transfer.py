"""Benchmark: does a cost model trained on the database make the next model tune faster?

Tunes the `--train-models` into an empty database (this CPU), trains the hardware family's cost
model on their records, then tunes each `--target-models` model twice from copies of that same
database state, with what the database teaches (the trained model as the search's starting
model and, since session 41, each unmeasured task seeded with the refitted records of its
`--kindred` nearest kindred kernels: schedules/kindred.py) and without either (same budget,
same seed), one such pair per `--seeds` value: two searches of the same seed differ by
the machine's noise alone, so one pair says little. Prints, per pair, the estimated latency (sum
over tasks of weight x best measured kernel time, what the progress bar shows, from the default
schedules' at trial 0) after every batch for both runs, the measured latency of both modules, and
how many trials the transferred run needed to reach the cold run's final estimate and to reach
90% of the cold run's gain (start to final estimate); per target, the median shares. Those
estimates are times measured minutes apart, the two runs' a quarter hour apart, and this VM's
speed drifts more than the two runs differ: so, when both runs of a pair are done, what each had
found at `--retime-points` checkpoints is re-timed side by side (bench/checkpoints.py) and both
measures are taken again on those curves ("retimed" in the JSON), with the transferred curve's
mean ratio to the cold one over the checkpoints. Curves go to a plot beside the JSON. Each
target's default schedules are measured once into the database before its pairs, so every run
starts from the same estimate.

It also compiles each target model on default schedules only (a `--trials 0` cache miss) twice,
with the plain default sample and with the defaults the trained model ranks best, verifies both
against ONNX Runtime and times the two modules and ONNX Runtime in alternation in one process.
`--db URL` starts from that database (its stored model, else one trained on it) instead of
filling one, or, with `--train-models` named, fills on top of it (and trains anew);
`--train-trials-per-task` sets the fill's budget apart from the targets'; `--defaults-only` skips
the searches, `--searches-only` the defaults.

    python3 bench/bench_transfer.py --train-models squeezenet shufflenet inception_v1 bvlc_alexnet \\
        zfnet512 inception_v2 --target-models resnet50 transformer --trials-per-task 32 \\
        --seeds 0 1 2 --out bench/results/transfer.json
    python3 bench/bench_transfer.py --db sqlite:////tmp/r50.sqlite --defaults-only \
        --target-models squeezenet shufflenet transformer --out bench/results/ranked-defaults.json
    python3 bench/bench_transfer.py --summarize bench/results/transfer-*.json   # both measures, no runs
    python3 bench/bench_transfer.py --db sqlite:////tmp/fill.sqlite --target-models transformer \
        --trials-per-task 16 --searches-only --profile /tmp/prof   # where each search's time goes
    ... --transferred-population 64   # the transferred searches' population (the cold ones keep theirs)
    ... --kindred 0                   # the transferred searches without kindred seeds (the model alone)
    ... --no-model                    # the kindred seeds without the model: a cold search whose
                                      # first round is the seeds instead of random draws
    ... --keep-db /tmp/k.sqlite --runs-dir /tmp/runs ...; then --db sqlite:////tmp/k.sqlite \
        --cold-from <its JSON> --runs-dir /tmp/runs   # another transferred variant against the
                                      # same cold runs, re-timed beside them from their kept copies
"""

from __future__ import annotations

import argparse
import json
from contextlib import closing
import platform
import sqlite3
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import bench_settings, task_count  # noqa: E402
from models import model_spec  # noqa: E402
from results_file import write_results  # noqa: E402
from search_profile import describe, profiled, profiled_settings  # noqa: E402
from kernels import model_on_database  # noqa: E402
from checkpoints import RunRecords, highest_record_id, retime  # noqa: E402

from tuner.cluster.threads import use_threads  # noqa: E402
from tuner.compile import compile_tuned  # noqa: E402
from tuner.search.cost_model_training import start_model, train_family  # noqa: E402
from tuner.search.tuning import round_minimum, search_config  # noqa: E402
from tuner.db import cost_models as store  # noqa: E402
from tuner.hardware import machine  # noqa: E402
from tuner.verify.inputs import verification_inputs  # noqa: E402
from tuner.verify.measure import ORTModel, TVMModel, compare, interleaved_medians_ms  # noqa: E402
from tuner.pipeline import RunRequest, open_database, run  # noqa: E402
from tuner.schedules.cost_model import RETRAIN_MODES, default_ranker  # noqa: E402
from tuner.progress import LogProgress  # noqa: E402
from tuner.targets import host_cpu_target  # noqa: E402


def copy_database(source: Path, dest: Path) -> None:
    """A consistent copy of a SQLite database, with what is still in its write-ahead log.

    A file copy (`shutil.copy`) of the database while this process held it open left the last
    commits behind in `-wal`: the trained cost model among them, so the "transferred" runs of
    this benchmark (results before 2026-12-04, session 20) started without it, exactly as the
    cold runs did (their reports said `cost_model.transferred: false`)."""
    if not source.is_file():  # sqlite3.connect would create an empty database there
        raise SystemExit(f"no database at {source}")
    dest.unlink(missing_ok=True)
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(dest)) as dst:
        src.backup(dst)


def remove_database(path: Path) -> None:
    """A SQLite database copy and its write-ahead log files."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        file.unlink(missing_ok=True)


def kept_run(runs_dir: Path | None, name: str, label: str, seed: int, budget: int) -> Path | None:
    """Where a run's database copy is kept (`--runs-dir`), for a later variant's re-timing."""
    return None if runs_dir is None else runs_dir / f"{name}-{budget}-{label}-{seed}.sqlite"


def variant_label(population: int, round_min: int, eps: float | None, kindred: int, model: bool = True) -> str:
    """A transferred run's label among kept runs: its search settings and kindred seeds, so that
    another variant run against the same kept cold runs keeps its copies beside this one's.
    Without the model (`model` false) the search runs on the cold settings: only the seeds count."""
    if not model:
        return f"seeded-kin{kindred}"
    return f"transferred-pop{population}-round{round_min}{'' if eps is None else f'-eps{eps:g}'}-kin{kindred}"


def keep_or_remove(copy: Path, kept: Path | None) -> None:
    """A run's database copy removed from the work folder, kept first where `kept` says."""
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        copy_database(copy, kept)
    remove_database(copy)


def same_start(kept: Path, db_file: Path, base_id: int) -> None:
    """A kept run re-timed beside a new one must have started from this database state: the
    records up to `base_id` the same (by id and trace)."""
    query = "SELECT id, trace_json FROM tuning_records WHERE id <= ? ORDER BY id"
    with closing(sqlite3.connect(kept)) as a, closing(sqlite3.connect(db_file)) as b:
        if a.execute(query, (base_id,)).fetchall() != b.execute(query, (base_id,)).fetchall():
            raise SystemExit(f"--runs-dir: {kept} did not start from this database state")


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


# The share of the cold run's gain (from the shared starting estimate to its final one) the second
# measure asks for. Reaching the cold run's very final estimate is decided by its last rounds:
# resnet50's transferred runs were ahead through the middle of every search (at 300 of ~620
# trials 30.0 against 32.1 ms) and still needed 84-85% of the trials for the last few per cent.
GAIN_SHARE = 0.9
GAIN_KEY = f"{round(GAIN_SHARE * 100)}pct_of_cold_gain"


def share_metrics(pair: dict) -> dict:
    """Both measures of one pair, "cold_final" (trials to the cold run's final estimate) and
    GAIN_KEY (trials to GAIN_SHARE of the cold run's gain): transferred and cold, and the
    transferred run's share."""
    return curve_shares(pair["cold"]["curve"], pair["transferred"]["curve"],
                        pair["cold"]["start_estimate_ms"], pair["cold"]["final_estimate_ms"])


def curve_shares(cold: list, transferred: list, start: float | None, goal: float | None) -> dict:
    """`share_metrics` of two curves, the cold one from `start` to `goal`."""
    out: dict = {}
    if not cold or start is None or goal is None:
        return out
    for key, target_ms in (("cold_final", goal), (GAIN_KEY, start - GAIN_SHARE * (start - goal))):
        reached, base = trials_to_reach(transferred, target_ms), trials_to_reach(cold, target_ms)
        out[key] = {"transferred": reached, "cold": base,
                    "share": reached / base if reached is not None and base else None}
    return out


def median_share(shares: list[float | None]) -> float | None:
    """The median share over seeds; a transferred run that never got there counts as worst."""
    median = float(np.median([np.inf if s is None else s for s in shares])) if shares else np.inf
    return median if np.isfinite(median) else None


def retimed_metrics(retimed: dict) -> dict:
    """Both measures of a pair's re-timed curves (checkpoints.py), and the transferred curve's
    mean ratio to the cold one over the checkpoints after the start (below 1: ahead on average)."""
    cold, transferred = retimed["curves"]["cold"], retimed["curves"]["transferred"]
    out = curve_shares(cold, transferred, cold[0][1], cold[-1][1])
    out["mean_ratio"] = float(np.mean([t[1] / c[1] for t, c in zip(transferred[1:], cold[1:])]))
    return out


def _never(trials: int | None) -> str:
    return "never" if trials is None else str(trials)


def summarize(paths: list[Path]) -> None:
    """Both measures for every pair of stored results (no searches run), by the searches' own
    estimates and, where the pair was re-timed side by side (checkpoints.py), by those times."""
    for path in paths:
        results = json.loads(path.read_text())
        print(f"{path.name}: the transferred runs got "
              + ("the trained model" if results.get("transferred_model", True) else "no trained model (cold searches)")
              + f" and {results.get('kindred_workloads', 0)} kindred kernel(s)' records per task as seeds")
        for row in results["targets"]:
            for kind, measure in (("estimates", share_metrics),
                                  ("re-timed", lambda p: retimed_metrics(p["retimed"]) if "retimed" in p else {})):
                metrics = [measure(p) for p in row["pairs"]]
                for key in next((m for m in metrics if m), {}):
                    if key == "mean_ratio":
                        print(f"{path.name} {row['model']} ({kind}): transferred/cold mean over checkpoints: "
                              + "; ".join(f"seed {p['seed']}: {m[key]:.3f}" for p, m in zip(row["pairs"], metrics) if m))
                        continue
                    parts = [f"seed {p['seed']}: {_never(m[key]['transferred'])}/{m[key]['cold']}"
                             + ("" if m[key]["share"] is None else f" ({m[key]['share']:.0%})")
                             for p, m in zip(row["pairs"], metrics) if m]
                    median = median_share([m[key]["share"] for m in metrics if m])
                    print(f"{path.name} {row['model']} ({kind}): trials to {key.replace('_', ' ')}, transferred/cold: "
                          f"{'; '.join(parts)}; median {'never' if median is None else f'{median:.0%}'}")
            for pair in row["pairs"]:
                for line in task_breakdown(pair.get("retimed", {})):
                    print(f"{path.name} {row['model']} seed {pair['seed']}: {line}")
            walls = [(p["seed"], p["transferred"]["tuning_seconds"], p["cold"]["tuning_seconds"]) for p in row["pairs"]]
            print(f"{path.name} {row['model']}: search seconds, transferred/cold: "
                  + "; ".join(f"seed {seed}: {t:.0f}/{c:.0f} ({t / c:.2f}x)" for seed, t, c in walls))


def task_breakdown(retimed: dict, least_share: float = 0.03) -> list[str]:
    """Per task holding at least `least_share` of the cold run's final latency, from the re-timed
    task curves (when the pair has them): where a transferred search gains or loses, and whether
    the cold one was already done after its first checkpoints (a space random sampling saturates)."""
    curves = retimed.get("task_curves")
    if not curves:
        return []
    checkpoints = [t for t, _ in retimed["curves"]["cold"]]
    total = retimed["curves"]["cold"][-1][1]
    lines = []
    for name, cold in sorted(curves["cold"].items(), key=lambda item: -item[1][-1]):
        if cold[-1] < least_share * total:
            continue
        transferred = curves["transferred"][name]
        reached = trials_to_reach(list(zip(checkpoints, transferred)), cold[-1])
        cold_reached = trials_to_reach(list(zip(checkpoints, cold)), cold[-1])
        lines.append(f"{name} ({cold[-1] / total:.0%} of the cold final): start {cold[0]:.3f} ms, final cold "
                     f"{cold[-1]:.3f} (reached at {cold_reached}), transferred {transferred[-1]:.3f} (the cold final "
                     f"at {_never(reached)}); at {checkpoints[len(checkpoints) // 4]} trials cold "
                     f"{cold[len(cold) // 4]:.3f}, transferred {transferred[len(transferred) // 4]:.3f}")
    return lines


def target_tasks(source: str, url: str, target: dict) -> tuple[list[ms.ExtractedTask], Any]:
    """The tuning tasks of `source` as the searches extract them (its kernels fused as tuning
    fuses them), what `measure_defaults` measures and each pair's re-timing times, and the
    database at `url` as the benchmark opens it."""
    _, fused, db = model_on_database(source, target, url)
    return ms.relax_integration.extract_tasks(fused, Target(dict(target))), db


def measure_defaults(tasks: list[ms.ExtractedTask], db: Any, target: dict) -> int:
    """Each task's default schedule measured once into the shared database, so both
    runs of every pair take their start from the same stored times (tuning reuses a stored
    default's time) instead of measuring the same schedules twice: those two measurements
    differed by up to 17% on this VM (session 21), and the trials each run needed inherited it.
    Returns how many defaults were measured."""
    from tuner.search.tuning import local_workers, measure_default_schedules

    workers = local_workers(bench_settings(), int(target["num-cores"]))
    try:
        times, _ = measure_default_schedules(tasks, Target(dict(target)), db, workers)
    finally:
        workers.close()
    return sum(t is not None for t in times)


def transfer_pair(name: str, source: str, tasks: list[ms.ExtractedTask], budget: int, seed: int, db_file: Path,
                  work: Path, target: dict, retrain: str, profile: Path | None = None, search: dict | None = None,
                  kindred: int = 0, cold: dict | None = None, retime_points: int = 0, retime_rounds: int = 3,
                  runs_dir: Path | None = None, variant: str = "transferred", model: bool = True) -> dict:
    """One seed's pair of searches from copies of the same database state: with the family's
    trained model as the search's starting model (refitted as `retrain` says) and, `kindred` > 0,
    tasks seeded with the refitted records of that many kindred kernels each (schedules/kindred.py),
    then without either (or `cold`: that run, made before from the same database state).
    `model` false: the "transferred" run gets the seeds alone, a cold search (cold model and
    settings) whose random first round the seeds replace: what the seeds are worth without the model.
    With `profile` (a folder), each search runs in this process under cProfile (search_profile.py);
    `search`: `search` settings set for both runs (the `transferred_*` ones apply to the transferred run).
    `retime_points` > 0: both runs' picks at that many checkpoints re-timed side by side when
    both are done (checkpoints.py). `runs_dir`: each run's database copy is kept there
    (`kept_run`; the transferred one as `variant`), and a reused `cold` run is re-timed from its
    copy there (without it, it is not re-timed)."""
    pair: dict = {"seed": seed}
    runs: dict[str, RunRecords] = {}
    base_id = highest_record_id(db_file)
    for label, transfer in (("transferred", True), ("cold", False)):
        if not transfer and cold is not None:
            # Only comparable from the same measured defaults (a --keep-db copy made after them).
            start = pair["transferred"]["start_estimate_ms"]
            if start is None or abs(cold["start_estimate_ms"] - start) > 1e-3 * start:
                raise SystemExit(f"--cold-from: its cold run started at {cold['start_estimate_ms']:.3f} ms, this "
                                 f"run at {start} ms: use the database kept (--keep-db) after its defaults")
            pair["cold"] = {**cold, "reused": True}
            kept = kept_run(runs_dir, name, "cold", seed, budget)
            if retime_points and kept is not None and kept.is_file():
                same_start(kept, db_file, base_id)
                runs["cold"] = RunRecords(kept, base_id)
            continue
        copy = work / f"{name}-{label}-{seed}.sqlite"
        copy_database(db_file, copy)
        curve = Curve()
        settings = bench_settings(transfer=transfer and model, retrain=retrain)
        settings = settings.model_copy(update={"kindred_workloads": kindred if transfer else 0})
        if search:
            settings = settings.model_copy(update={"search": settings.search.model_copy(update=search)})
        request = RunRequest(model=source, target=target, trials=budget, out_dir=work / f"{name}-{label}-{seed}",
                             db_url=f"sqlite:///{copy}", seed=seed, measure_untuned=False, name=name)
        seconds = None
        if profile is None:
            report = run(request, settings, curve)
        else:
            profile.mkdir(parents=True, exist_ok=True)
            report, seconds = profiled(lambda: run(request, profiled_settings(settings), curve),
                                       profile / f"{name}-{label}-{seed}.prof")
            print(f"[bench] {name} seed {seed} {label}: {describe(seconds)}", flush=True)
        runs[label] = RunRecords(copy, base_id)
        if report["cost_model"]["transferred"] != (transfer and model):
            raise SystemExit(f"{name} {label}: the run's cost model was "
                             f"{'' if report['cost_model']['transferred'] else 'not '}transferred")
        pair[label] = {"curve": curve.points, "start_estimate_ms": curve.points[0][1] if curve.points else None,
                       "final_estimate_ms": curve.points[-1][1] if curve.points else None,
                       "tasks_default_measured": report["tasks_default_measured"],
                       "latency_ms": report["latency_ms"]["tuned"], "onnxruntime_ms": report["latency_ms"]["onnxruntime"],
                       "tuning_seconds": report["tuning_seconds"], "cost_model": report["cost_model"],
                       "kindred_workloads": settings.kindred_workloads,
                       **({"profile_seconds": seconds} if seconds is not None else {})}
    if retime_points and len(runs) == 2:
        print(f"[bench] {name} seed {seed}: re-timing both runs' picks at {retime_points} checkpoints side by side",
              flush=True)
        pair["retimed"] = retime(tasks, target, bench_settings(), runs, budget, retime_points, retime_rounds)
        pair["retimed"]["metrics"] = retimed_metrics(pair["retimed"])
    for label, run_records in runs.items():
        kept = kept_run(runs_dir, name, label if label == "cold" else variant, seed, budget)
        if run_records.db_file != kept:
            keep_or_remove(run_records.db_file, kept)
    metrics = share_metrics(pair)
    final = metrics.get("cold_final", {})
    reached, cold = final.get("transferred"), final.get("cold")
    pair["trials_to_reach_cold_final"] = {"transferred": reached, "cold": cold}
    pair["trial_share_needed"] = final.get("share")
    gain = metrics.get(GAIN_KEY) or {}
    pair[f"trials_to_{GAIN_KEY}"] = metrics.get(GAIN_KEY)
    def estimates(run: dict) -> str:
        return " -> ".join("?" if ms is None else f"{ms:.3f}" for ms in (run["start_estimate_ms"], run["final_estimate_ms"]))

    print(f"[bench] {name} seed {seed}: transferred {pair['transferred']['latency_ms']:.2f} ms "
          f"(estimate {estimates(pair['transferred'])}), cold {pair['cold']['latency_ms']:.2f} ms "
          f"(estimate {estimates(pair['cold'])}); trials to reach the cold run's final estimate: "
          f"{reached} transferred vs {cold} cold; to {GAIN_SHARE:.0%} of the cold run's gain: "
          f"{gain.get('transferred')} vs {gain.get('cold')}",
          flush=True)
    if "retimed" in pair:
        curves, again = pair["retimed"]["curves"], pair["retimed"]["metrics"]
        print(f"[bench] {name} seed {seed}, re-timed side by side: transferred "
              f"{' '.join(f'{v:.3f}' for _, v in curves['transferred'])}; cold "
              f"{' '.join(f'{v:.3f}' for _, v in curves['cold'])} ms; trials to the cold final: "
              f"{again['cold_final']['transferred']} vs {again['cold_final']['cold']}; to {GAIN_SHARE:.0%} of its gain: "
              f"{again[GAIN_KEY]['transferred']} vs {again[GAIN_KEY]['cold']}; mean ratio {again['mean_ratio']:.3f}",
              flush=True)
    return pair


def ranked_defaults(name: str, source: str, url: str, target: dict) -> dict:
    """The model on default schedules, plain and ranked by the database's cost model: both
    verified, then timed in alternation with ONNX Runtime."""
    tgt = Target(dict(target))
    use_threads(int(target["num-cores"]))
    loaded, fused, db = model_on_database(source, target, url)
    start = start_model(db, LogProgress(30))
    if start.trained is None:
        raise SystemExit(f"no usable cost model in {url}: {start.describe}")
    ranker = default_ranker(start.trained, tgt)
    names = list(loaded.input_shapes)
    inputs = verification_inputs(loaded, None, 0)[0]
    ort = ORTModel(loaded.proto, int(target["num-cores"]))
    reference = ort.run(inputs)
    out_names = [o.name for o in loaded.proto.graph.output]
    row: dict = {"model": name}
    modules = {}
    for label, rank in (("plain", None), ("ranked", ranker)):
        t0 = time.perf_counter()
        compiled = compile_tuned(fused, tgt, db, ranker=rank)
        module = TVMModel(compiled.executable, names)
        args = module.prepare(inputs)
        error = compare(module.run(args), reference, out_names, 1e-3, 1e-3).max_abs_error
        modules[label] = (module, args)
        row[label] = {"defaults": compiled.defaults.as_dict(), "compile_seconds": time.perf_counter() - t0,
                      "max_abs_error": error}
    plain_ms, ranked_ms, ort_ms = interleaved_medians_ms(
        [lambda: modules["plain"][0].call(modules["plain"][1]), lambda: modules["ranked"][0].call(modules["ranked"][1]),
         lambda: ort.run(inputs)], 200, 5.0)
    row["plain"]["ms"], row["ranked"]["ms"], row["onnxruntime_ms"] = plain_ms, ranked_ms, ort_ms
    row["ranked_vs_plain"] = ranked_ms / plain_ms
    print(f"[bench] {name} defaults only: plain {plain_ms:.2f} ms, ranked {ranked_ms:.2f} ms "
          f"({row['ranked']['defaults']['ranked']} of {row['ranked']['defaults']['sampled']} sampled defaults moved; "
          f"ranked/plain {ranked_ms / plain_ms:.3f}), ORT {ort_ms:.2f} ms", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-models", nargs="+",
                        help="models tuned into the database first (default: six zoo nets; none with --db)")
    parser.add_argument("--target-models", nargs="+", default=["resnet50", "transformer"])
    parser.add_argument("--trials-per-task", type=int, default=32)
    parser.add_argument("--train-trials-per-task", type=int, help="the fill's budget (default: --trials-per-task)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one pair of searches (transferred, cold) per seed; the fill uses the first")
    parser.add_argument("--out", type=Path, default=Path("bench/results/transfer.json"))
    parser.add_argument("--db", help="start from this database instead of filling one with --train-models")
    parser.add_argument("--keep-db", type=Path, help="copy the filled database here, and again after each target's "
                        "defaults are measured (reuse it with --db, and its cold runs with --cold-from)")
    parser.add_argument("--defaults-only", action="store_true", help="only compare plain and ranked defaults")
    parser.add_argument("--searches-only", action="store_true", help="skip the plain vs ranked defaults comparison")
    parser.add_argument("--retrain", choices=RETRAIN_MODES,
                        help="how the transferred searches refit the model (default: the configured mode)")
    parser.add_argument("--transferred-population", type=int,
                        help="the transferred searches' population (default: the configured one)")
    parser.add_argument("--transferred-round-min", type=int, metavar="N",
                        help="the fewest trials per round of the transferred searches "
                             "(search.transferred_min_trials_per_iter; default: the configured one)")
    parser.add_argument("--transferred-eps", type=float, metavar="SHARE",
                        help="the share of each transferred round drawn at random "
                             "(search.transferred_eps_greedy; default: the configured one)")
    parser.add_argument("--kindred", type=int, default=None, metavar="N",
                        help="the transferred searches also start from the records of N kindred kernels per task "
                             "(default: the configured kindred_workloads; 0: the model alone); the cold ones never")
    parser.add_argument("--no-model", action="store_true",
                        help="the transferred searches get the kindred seeds alone: cold searches (no trained model, "
                             "the cold search settings) whose first round is the seeds")
    parser.add_argument("--cold-from", type=Path, metavar="JSON",
                        help="take each seed's cold run from these results (same database state) instead of searching again")
    parser.add_argument("--runs-dir", type=Path, metavar="DIR",
                        help="keep each run's database copy here; with --cold-from, re-time the reused cold runs "
                             "from their copies here beside the new transferred runs")
    parser.add_argument("--retime-points", type=int, default=16, metavar="N",
                        help="re-time both runs' picks at N checkpoints side by side after each pair (0: not)")
    parser.add_argument("--retime-rounds", type=int, default=3, help="rounds by turns of that re-timing")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="search in this process under cProfile: the time per part in the JSON, stats in DIR")
    parser.add_argument("--summarize", type=Path, nargs="+", metavar="JSON",
                        help="print both measures of stored results' pairs and stop (no searches)")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    if args.no_model and (transferred_flags := [f for f, v in (
            ("--transferred-population", args.transferred_population), ("--transferred-round-min", args.transferred_round_min),
            ("--transferred-eps", args.transferred_eps), ("--retrain", args.retrain)) if v is not None]):
        raise SystemExit(f"--no-model: {', '.join(transferred_flags)} set(s) what only a trained model's search uses")
    if args.train_models is None and not args.db:
        # densenet121 (258 tasks) never finished a fill within a session here: inception_v2 is the sixth.
        args.train_models = ["squeezenet", "shufflenet", "inception_v1", "bvlc_alexnet", "zfnet512", "inception_v2"]
    fill_budget = args.train_trials_per_task or args.trials_per_task
    target = host_cpu_target()
    # Retraining is done here, once, where the benchmark says: never in the background meanwhile.
    settings = bench_settings()
    retrain = args.retrain or settings.cost_model.retrain
    kindred = settings.kindred_workloads if args.kindred is None else args.kindred
    if args.no_model and not kindred:
        raise SystemExit("--no-model with no kindred seeds (--kindred 0): both runs of a pair would be cold")
    transferred_search = {key: value for key, value in (
        ("transferred_population_size", args.transferred_population),
        ("transferred_min_trials_per_iter", args.transferred_round_min),
        ("transferred_eps_greedy", args.transferred_eps)) if value is not None}
    transferred = settings.search.model_copy(update=transferred_search)
    # What a transferred search of these settings runs with (their fallbacks are tuning.py's).
    steered = settings.model_copy(update={"search": transferred})
    model_steers = not args.no_model
    population = search_config(steered, Target(dict(target)), trained=model_steers).population_size
    results: dict = {"cpu": machine(), "platform": platform.platform(), "trials_per_task": args.trials_per_task,
                     "seeds": args.seeds, "retrain": retrain, "kindred_workloads": kindred,
                     "kindred_first_round": settings.kindred_first_round,
                     "transferred_model": model_steers, "retime_points": args.retime_points, "retime_rounds": args.retime_rounds,
                     "transferred_population": population,
                     "transferred_min_trials_per_iter": transferred.transferred_min_trials_per_iter,
                     "transferred_eps_greedy": transferred.transferred_eps_greedy,
                     "train_models": [*([f"from {args.db}"] if args.db else []), *(args.train_models or [])],
                     "train_trials_per_task": fill_budget, "targets": [],
                     "ranked_defaults": []}
    with tempfile.TemporaryDirectory(prefix="tuner-transfer-") as tmp:
        work = Path(tmp)
        db_file = work / "shared.sqlite"
        url = f"sqlite:///{db_file}"
        t0 = time.perf_counter()
        if args.db:
            if not args.db.startswith("sqlite:///"):
                raise SystemExit("--db: a SQLite URL (it is copied for each run)")
            copy_database(Path(args.db.removeprefix("sqlite:///")), db_file)
        for name in args.train_models or []:
            source = model_spec(name, work)
            budget = fill_budget * task_count(source, target)
            run(RunRequest(model=source, target=target, trials=budget, out_dir=work / name, db_url=url,
                           seed=args.seeds[0], measure_untuned=False, name=name), settings, LogProgress(30))
        results["fill_seconds"] = time.perf_counter() - t0
        if args.keep_db:
            copy_database(db_file, Path(args.keep_db))
        db = open_database(url, target)
        t0 = time.perf_counter()
        stored = [m for m in store.listing(db.engine, db.provenance.family) if m["owner"] == "shared"]
        model = stored[0] if args.db and stored and not args.train_models else train_family(
            db.engine, db.provenance.family, store.SHARED, int(target["num-cores"]), settings.cost_model.min_records)
        results["model"] = {**model, "seconds": time.perf_counter() - t0}
        print(f"[bench] trained on {model['records']} records of {model['workloads']} workloads, hold-out rank "
              f"correlation {model['holdout_spearman']}", flush=True)
        for name in [] if args.searches_only else args.target_models:
            results["ranked_defaults"].append(ranked_defaults(name, model_spec(name, work), url, target))
        for name in [] if args.defaults_only else args.target_models:
            source = model_spec(name, work)
            budget = args.trials_per_task * task_count(source, target)
            row: dict = {"model": name, "trials": budget, "pairs": [], "median_trial_share_needed": None,
                         "median_trial_share_to_gain": None}
            results["targets"].append(row)
            tasks, target_db = target_tasks(source, url, target)
            row["defaults_measured_once"] = measure_defaults(tasks, target_db, target)
            if args.keep_db:  # with this target's defaults: a later --db run starts where this one did
                copy_database(db_file, Path(args.keep_db))
            for seed in args.seeds:
                row["pairs"].append(transfer_pair(name, source, tasks, budget, seed, db_file, work, target, retrain,
                                               args.profile, transferred_search, kindred,
                                               earlier_cold(args.cold_from, name, seed, budget),
                                               args.retime_points, args.retime_rounds, args.runs_dir,
                                               variant_label(population, round_minimum(steered, trained=True),
                                                             transferred.transferred_eps_greedy, kindred, model_steers),
                                               model_steers))
                shares = [p["trial_share_needed"] for p in row["pairs"]]
                row["median_trial_share_needed"] = median_share(shares)
                row["median_trial_share_to_gain"] = median_share(
                    [(p[f"trials_to_{GAIN_KEY}"] or {}).get("share") for p in row["pairs"]])
                save(results, args.out)  # after every pair: a long run cut short keeps what it measured
            print(f"[bench] {name}: trial share the transferred runs needed, per seed: "
                  f"{', '.join('never' if s is None else f'{s:.0%}' for s in shares)}", flush=True)
    save(results, args.out)
    print(f"wrote {args.out}" + (f" and {args.out.with_suffix('.png')}" if results["targets"] else ""))


def earlier_cold(path: Path | None, name: str, seed: int, budget: int) -> dict | None:
    """The cold run of `name` and `seed` at `budget` trials in the results at `path`, if any."""
    if path is None:
        return None
    for row in json.loads(path.read_text())["targets"]:
        if row["model"] == name and row["trials"] == budget:
            for pair in row["pairs"]:
                if pair["seed"] == seed:
                    return pair["cold"]
    raise SystemExit(f"--cold-from {path}: no cold run of {name} at {budget} trials, seed {seed}")


def save(results: dict, out: Path) -> None:
    write_results(results, out)
    if results["targets"]:
        plot(results, out.with_suffix(".png"))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["targets"]
    retimed = any("retimed" in pair for row in rows for pair in row["pairs"])
    fig, axes = plt.subplots(2 if retimed else 1, len(rows), figsize=(6 * len(rows), 8 if retimed else 4),
                             squeeze=False)
    styles = ["-", "--", ":", "-."]
    for column, row in enumerate(rows):
        views = [(axes[0][column], lambda pair, label: pair[label]["curve"], "estimated latency (ms)", "searches' times")]
        if retimed:
            views.append((axes[1][column], lambda pair, label: pair.get("retimed", {}).get("curves", {}).get(label, []),
                          "latency re-timed side by side (ms)", "picks re-timed side by side"))
        for ax, points_of, ylabel, title in views:
            for k, pair in enumerate(row["pairs"]):
                for color, label in (("C0", "transferred"), ("C1", "cold")):
                    points = points_of(pair, label)
                    ax.plot([t for t, _ in points], [v for _, v in points], color=color,
                            linestyle=styles[k % len(styles)], label=f"{label}, seed {pair['seed']}",
                            drawstyle="steps-post")
            ax.set_title(f"{row['model']} ({results['trials_per_task']} trials/task): {title}")
            ax.set_xlabel("trials")
            ax.set_ylabel(ylabel)
            ax.legend()
    fig.suptitle(textwrap.fill(f"cost model trained on {', '.join(results['train_models'])}: {results['cpu']}", 90),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
