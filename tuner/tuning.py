"""Tune the tasks the database cannot serve, with MetaSchedule's task scheduler."""

from __future__ import annotations

import contextlib
import logging
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
from tvm.s_tir.meta_schedule.utils import fork_seed
from tvm.target import Target

from tuner.cluster.local import LocalBuilder, LocalRunner
from tuner.schedules.space import SearchConfig, cost_model, search_strategy, space_generator

from .config import Settings
from .progress import Progress, ProgressCallback


@dataclass
class TuneResult:
    trials: int
    per_task_trials: list[int]
    cluster: dict[str, Any] = field(default_factory=dict)


@dataclass
class Workers:
    """The builder and runner of one tuning job, and what the report says about them."""

    builder: Any
    runner: Any
    close: Callable[[], None]
    describe: Callable[[], dict[str, Any]]
    # Why the cluster could not go on (e.g. its last matching node left), when it could not.
    failure: Callable[[], Exception | None] = lambda: None


def local_workers(settings: Settings, cores: int) -> Workers:
    """Worker processes on this machine (no Ray)."""
    builder = LocalBuilder(settings.workers.builders or cores, settings.workers.build_timeout_s)
    m = settings.measure
    runner = LocalRunner(settings.workers.run_timeout_s, m.number, m.repeat, m.min_repeat_ms, m.cpu_cache_flush)
    builder.pool.start()
    runner.pool.start()

    def close() -> None:
        builder.close()
        runner.close()

    return Workers(builder, runner, close, lambda: {
        "backend": "local", "nodes": 1, "builders": builder.pool.workers, "runners": 1,
        "trials_per_node": {platform.node(): runner.measured},
        "seconds": {"build": round(builder.seconds, 3), "run": round(runner.seconds, 3)},
    })


def ray_workers(settings: Settings, cores: int, hardware_key: str) -> Workers:
    """Builder and runner actors on the Ray cluster this process is connected to."""
    from tuner.cluster import ray_backend as rb

    store = rb.ArtifactStore()
    w, m = settings.workers, settings.measure
    builders = w.builders or max(1, int(sum(n.cpus for n in rb.nodes() if n.alive)) - 1)
    builder = rb.RayBuilder(builders, w.build_timeout_s, store, w.actor_start_timeout_s)
    try:
        runner = rb.RayRunner(hardware_key, w.run_timeout_s, (m.number, m.repeat, m.min_repeat_ms, m.cpu_cache_flush),
                              store, overlap=w.overlap_builds, start_timeout_s=w.actor_start_timeout_s)
    except BaseException:
        builder.close()
        store.close()
        raise

    def close() -> None:
        builder.close()
        runner.close()
        store.close()

    return Workers(builder, runner, close, lambda: {
        "backend": "ray", "nodes": len(set(builder.nodes) | set(runner.nodes)),
        "builders": len(builder.actors), "runners": len(runner.actors),
        "trials_per_node": dict(runner.counts),
        "seconds": {"build": round(builder.seconds, 3), "run": round(runner.seconds, 3)},
    }, failure=lambda: runner.failure or builder.failure)


def _quiet_metaschedule_logs() -> None:
    """MetaSchedule logs each task to files under work_dir; keep its chatter off stdout."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    logger.propagate = False
    for handler in list(logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)


def trials_per_iter(trials: int, tasks: int, cap: int) -> int:
    """Small enough that every task gets a first round within the budget, at most `cap`."""
    return max(1, min(cap, trials // max(1, tasks)))


def tune(
    tasks: list[ms.ExtractedTask],
    target: Target,
    database: ms.Database,
    trials: int,
    settings: Settings,
    seed: int,
    work_dir: Path,
    progress: Progress,
    known_best_s: list[float | None] | None = None,
    workers: Workers | None = None,
) -> TuneResult:
    """Spend `trials` measurements over `tasks`; every record lands in `database` as measured."""
    work_dir.mkdir(parents=True, exist_ok=True)
    cores = int(target.attrs.get("num-cores", 1))
    with contextlib.redirect_stdout(sys.stderr):  # its set-up logs one line to the console
        loggers = get_loggers_from_work_dir(str(work_dir), [t.task_name for t in tasks])
    _quiet_metaschedule_logs()
    cfg = SearchConfig(
        population_size=settings.search.population_size,
        genetic_num_iters=settings.search.genetic_num_iters,
        init_min_unmeasured=settings.search.init_min_unmeasured,
    )
    contexts = [
        ms.TuneContext(
            mod=task.dispatched[0],
            target=task.target,
            space_generator=space_generator(target),
            search_strategy=search_strategy(cfg),
            task_name=task.task_name,
            logger=logger,
            rand_state=rand_state,
            num_threads=cores,
        ).clone()
        for task, logger, rand_state in zip(tasks, loggers, fork_seed(seed, n=len(tasks)))
    ]
    weights = [float(t.weight) for t in tasks]
    callback = ProgressCallback(weights, known_best_s or [None] * len(tasks), progress.advance)
    owned = workers is None  # ours to close; a caller's workers are the caller's
    workers = workers or local_workers(settings, cores)
    progress.start(trials, len(tasks))
    try:
        ms.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(work_dir),
            max_trials_global=trials,
            num_trials_per_iter=trials_per_iter(trials, len(tasks), settings.search.max_trials_per_iter),
            builder=workers.builder,
            runner=workers.runner,
            database=database,
            cost_model=cost_model(cores),
            measure_callbacks=[*ms.MeasureCallback.create("default"), callback],
            task_scheduler=ms.task_scheduler.GradientBased(seed=seed),
        )
        cluster = workers.describe()
    finally:
        progress.stop()
        if owned:
            workers.close()
    return TuneResult(trials=callback.trials, per_task_trials=callback.per_task_trials, cluster=cluster)
