"""Task-level distribution: a job's tasks split into shares, each searched by its own Ray actor.

The driver keeps the builder and runner pools (one per job, so measurements stay one at a time
per node) and the progress bar; each searcher runs MetaSchedule's task scheduler over its share
with a share of the budget, committing into the job's database as it measures. See
cluster/searchers.py for the actors and docs/scaling.md for why the search must be spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tuner.cluster import searchers as rs
from tuner.cluster.worker_tasks import dumps_target

from ..config import Settings
from ..errors import TunerError
from ..progress import Progress, SilentProgress
from .final_timing import FinalTiming
from .record_checks import CheckStats
from .tuning import TuneResult, Workers, per_node, ray_workers, tune, tuning_cores
from .job_database import open_database


@dataclass
class DatabaseSpec:
    """How a searcher opens the job's database: the same provenance as the driver's handle."""

    url: str
    team: str | None
    job_id: str | None
    private: bool
    warm_start: bool


@dataclass
class Share:
    """Everything one searcher needs; pickled to the actor (modules as TVM JSON)."""

    index: int
    tasks: list[tuple[str, str, float]]  # (task name, TIR module JSON, weight)
    trials: int
    target: dict[str, Any]
    hardware_key: str
    database: DatabaseSpec
    settings: Settings
    seed: int
    work_dir: str
    pools: tuple[Any, Any]  # the job's builder and runner ActorPools
    board: Any  # cluster.searchers.ProgressBoard, set once the searchers are started


def split(count: int, trials: int, n_shares: int) -> list[tuple[list[int], int]]:
    """Task indices and trials for each share: tasks dealt round robin (MetaSchedule's own
    scheduler then spends each share's budget where its gradient points), trials in proportion
    to the tasks. Never more shares than tasks or trials."""
    n = max(1, min(n_shares, count, trials))
    groups = [list(range(i, count, n)) for i in range(n)]
    budgets = [trials * len(g) // count for g in groups]
    for i in range(trials - sum(budgets)):
        budgets[i % n] += 1
    return list(zip(groups, budgets))


class BoardProgress(SilentProgress):
    """A searcher's Progress: posts trials and messages to the job's board instead of drawing a bar.

    ``offset``: trials a previous attempt of this share already measured (a searcher that died
    and was restarted goes on with what is left of its budget)."""

    def __init__(self, board: Any, index: int, offset: int) -> None:
        self.board, self.index, self.offset = board, index, offset

    def advance(self, trials_done: int, best_ms: float | None) -> None:
        self.board.update.remote(self.index, self.offset + trials_done, best_ms)

    def message(self, text: str) -> None:
        self.board.message.remote(self.index, text)


def search_share(share: Share) -> dict[str, Any]:
    """Runs inside a searcher actor: tune one share, commit its records, say what it spent."""
    target = Target(share.target)
    tasks = []
    for name, mod_json, weight in share.tasks:
        mod = tvm.ir.load_json(mod_json)
        tasks.append(ms.ExtractedTask(name, mod, target, [mod], int(weight)))
    done_before = ray.get(share.board.trials_of.remote(share.index))
    left = share.trials - done_before
    if left <= 0:
        return {"trials": done_before, "cluster": {}, "defaults_measured": 0, "commit_seconds": 0.0,
                "checks": CheckStats().as_dict(), "node": ray.get_runtime_context().get_node_id()}
    spec = share.database
    database = open_database(spec.url, share.target, spec.team, spec.job_id, spec.private, spec.warm_start)
    workers = ray_workers(share.settings, tuning_cores(target), share.hardware_key, share.pools)
    try:
        result = tune(tasks, target, database, left, share.settings, share.seed, Path(share.work_dir),
                      BoardProgress(share.board, share.index, done_before), workers=workers)
    finally:
        workers.close()
    return {"trials": done_before + result.trials, "cluster": result.cluster,
            "defaults_measured": result.defaults_measured, "commit_seconds": database.commit_seconds,
            "checks": result.checks.as_dict(), "cost_model": result.cost_model,
            "final_timing": result.final_timing.as_dict(), "node": ray.get_runtime_context().get_node_id()}


@dataclass
class ShareJob:
    """One target of a job, to be searched in shares: its tasks, budget and Ray workers."""

    tasks: list[ms.ExtractedTask]
    target: Target
    hardware_key: str
    trials: int
    workers: Workers


def tune_shares(jobs: list[ShareJob], database: DatabaseSpec, n_shares: int, settings: Settings, seed: int,
                work_dir: Path, progress: Progress, same_host_only: bool) -> list[tuple[TuneResult, float]]:
    """Tune every job's tasks in up to ``n_shares`` searcher actors per job, all at the same
    time; each job's searchers share that job's builder and runner pools.

    Returns, per job, the merged result and the seconds its searchers spent committing records."""
    if any(job.workers.pools is None for job in jobs):
        raise TunerError("searching in several processes needs Ray (--ray-address)")
    owner: list[int] = []  # the job of each share
    payloads = []
    for j, job in enumerate(jobs):
        target_dict = dumps_target(job.target)
        for group, budget in split(len(job.tasks), job.trials, n_shares):
            index = len(payloads)
            payloads.append((Share(
                index=index,
                tasks=[(job.tasks[t].task_name, tvm.ir.save_json(job.tasks[t].dispatched[0]), float(job.tasks[t].weight))
                       for t in group],
                trials=budget, target=target_dict, hardware_key=job.hardware_key,
                database=database, settings=settings, seed=seed + index, work_dir=str(work_dir / f"searcher-{index}"),
                pools=job.workers.pools, board=None,
            ),))
            owner.append(j)
    cpu_keys = tuple(job.hardware_key for job in jobs if job.target.kind.name != "cuda")
    searchers = rs.start_searchers(len(payloads), same_host_only, settings.workers.actor_start_timeout_s, cpu_keys)
    for (share,) in payloads:
        share.board = searchers.board
    progress.message(f"searching {sum(len(job.tasks) for job in jobs)} task(s) of {len(jobs)} target(s) in "
                     f"{len(payloads)} searcher(s) on {len(set(searchers.nodes))} node(s)")
    progress.start(sum(job.trials for job in jobs), sum(len(job.tasks) for job in jobs))

    def on_progress(done: list[int], best_ms: list[float | None], messages: list[str]) -> None:
        for text in messages:
            progress.message(text)
        # The estimate is a model latency: it only means something for one target.
        known = [b for b, j in zip(best_ms, owner) if b is not None and j == 0]
        progress.advance(sum(done), sum(known) if known else None)

    try:
        results = rs.run_shares(searchers, search_share, payloads, on_progress,
                                start_timeout_s=settings.workers.actor_start_timeout_s)
    except rs.ClusterError as exc:
        raise TunerError(str(exc)) from None
    finally:
        progress.stop()
        searchers.close()
    return [_merge(job, [r for r, o in zip(results, owner) if o == j]) for j, job in enumerate(jobs)]


def _merge(job: ShareJob, results: list[dict[str, Any]]) -> tuple[TuneResult, float]:
    """One job's searcher results as one TuneResult; the cluster part names every searcher."""
    cluster = job.workers.describe()
    per_runner: dict[str, int] = {}
    for res in results:
        for slot, count in res["cluster"].get("trials_per_runner", {}).items():
            per_runner[slot] = per_runner.get(slot, 0) + count
    cluster["trials_per_runner"] = per_runner
    cluster["trials_per_node"] = per_node(per_runner)
    cluster["searchers"] = len(results)
    cluster["searcher_nodes"] = [res.get("node") for res in results]
    cluster["trials_per_searcher"] = [res["trials"] for res in results]
    cluster["seconds"] = {part: round(sum(res["cluster"].get("seconds", {}).get(part, 0.0) for res in results), 3)
                          for part in ("build", "run")}
    checks, final = CheckStats(), FinalTiming()
    for res in results:
        checks = checks.add(CheckStats.from_dict(res["checks"]))
        if "final_timing" in res:  # not in a share that had nothing left to tune
            final = final.add(FinalTiming.from_dict(res["final_timing"]))
    merged = TuneResult(trials=sum(res["trials"] for res in results), per_task_trials=[],
                        cluster=cluster, defaults_measured=sum(res["defaults_measured"] for res in results),
                        checks=checks, final_timing=final, cost_model=next((res["cost_model"] for res in results if "cost_model" in res),
                                                       {"transferred": False}))
    return merged, sum(res["commit_seconds"] for res in results)
