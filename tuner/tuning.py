"""Tune the tasks the database cannot serve, with MetaSchedule's task scheduler."""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

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
    builder = LocalBuilder(settings.workers.builders or cores, settings.workers.build_timeout_s)
    m = settings.measure
    runner = LocalRunner(settings.workers.run_timeout_s, m.number, m.repeat, m.min_repeat_ms, m.cpu_cache_flush)
    builder.pool.start()
    runner.pool.start()
    progress.start(trials, len(tasks))
    try:
        ms.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(work_dir),
            max_trials_global=trials,
            num_trials_per_iter=trials_per_iter(trials, len(tasks), settings.search.max_trials_per_iter),
            builder=builder,
            runner=runner,
            database=database,
            cost_model=cost_model(cores),
            measure_callbacks=[*ms.MeasureCallback.create("default"), callback],
            task_scheduler=ms.task_scheduler.GradientBased(seed=seed),
        )
    finally:
        progress.stop()
        builder.close()
        runner.close()
    return TuneResult(trials=callback.trials, per_task_trials=callback.per_task_trials)
