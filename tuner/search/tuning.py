"""Tune the tasks the database cannot serve, with MetaSchedule's task scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
from tvm.s_tir.meta_schedule.utils import fork_seed
from tvm.target import Target

from tuner.cluster.local import LocalBuilder, LocalChecker, LocalRunner
from tuner.db.database import DEFAULT_MARK, SQLDatabase
from tuner.schedules.cost_model import cost_model, default_ranker, scores_at_random
from tuner.schedules.defaults import Ranker, default_schedule
from tuner.schedules.space import (
    Kindred,
    SearchConfig,
    design_spaces,
    fixed_space,
    sample_builds,
    search_strategy,
    space_generator,
    wants_tensor_cores,
)
from tuner.schedules.strategy import has_own_records

from ..config import Settings
from ..interrupts import deferred_interrupts
from ..interrupts import requested as interrupt_requested
from ..progress import Progress, ProgressCallback
from .cost_model_training import StartModel, start_model
from .final_timing import FinalTiming, time_finalists
from .record_checks import CheckFn, CheckStats, check_records


@dataclass
class TuneResult:
    trials: int
    per_task_trials: list[int]
    cluster: dict[str, Any] = field(default_factory=dict)
    defaults_measured: int = 0  # tasks whose default schedule was measured and stored
    checks: CheckStats = field(default_factory=CheckStats)  # the tuned tasks' fastest records checked
    cost_model: dict[str, Any] = field(default_factory=lambda: {"transferred": False})
    final_timing: FinalTiming = field(default_factory=FinalTiming)


@dataclass
class Workers:
    """The builder and runner of one tuning job, and what the report says about them."""

    builder: Any
    runner: Any
    close: Callable[[], None]
    describe: Callable[[], dict[str, Any]]
    # Record checks on the hardware the runners measure on (see record_checks.py).
    check: CheckFn
    # Why the cluster could not go on (e.g. its last matching node left), when it could not.
    failure: Callable[[], Exception | None] = lambda: None
    # Ray: the builder and runner ActorPools, which the job's searchers share.
    pools: tuple[Any, Any] | None = None
    # Lets built artifacts be measured `runs` times (0: release them): a Ray runner takes each
    # artifact once, a local one reads a file that stays until its folder is removed.
    allow_runs: Callable[[list[str], int], None] = lambda paths, runs: None


def local_workers(settings: Settings, cores: int) -> Workers:
    """Worker processes on this machine (no Ray)."""
    builder = LocalBuilder(settings.workers.builders or cores, settings.workers.build_timeout_s)
    m = settings.measure
    runner = LocalRunner(settings.workers.run_timeout_s, m.cpu_timed_calls, cores)
    builder.pool.start()
    runner.pool.start()

    def close() -> None:
        builder.close()
        runner.close()

    return Workers(builder, runner, close, lambda: {
        "backend": "local", "nodes": 1, "builders": builder.pool.workers, "runners": 1,
        "trials_per_node": {platform.node(): runner.measured},
        "seconds": {"build": round(builder.seconds, 3), "run": round(runner.seconds, 3)},
    }, check=LocalChecker(builder.pool.workers, settings.checks.timeout_s, pool=builder.pool))


def ray_builder_count(settings: Settings) -> int:
    """The configured builders, else one per CPU of the cluster, as the in-process path has one
    per core: a driver that searches alone never searches while its batch builds (leaving it a
    CPU made one local Ray on 2 cores build with half the in-process path's workers)."""
    from tuner.cluster import ray_backend as rb

    return settings.workers.builders or max(1, int(sum(n.cpus for n in rb.nodes() if n.alive)))


def ray_workers(settings: Settings, cores: int, hardware_key: str, pools: tuple[Any, Any] | None = None) -> Workers:
    """Builder and runner actors on the Ray cluster this process is connected to.

    ``pools`` (builder and runner ActorPools, either may be None): use actors that another
    caller started and owns (the job's builders, shared by its targets; a searcher uses its
    job's pools); None: start them here."""
    from tuner.cluster import ray_backend as rb

    store = rb.ArtifactStore()
    w, m = settings.workers, settings.measure
    builder_pool, runner_pool = (p.shared() if p is not None else None for p in (pools or (None, None)))
    builder = rb.RayBuilder(ray_builder_count(settings), w.build_timeout_s, store, w.actor_start_timeout_s,
                            pool=builder_pool)
    try:
        runner = rb.RayRunner(hardware_key, w.run_timeout_s, (m.cpu_timed_calls, cores),
                              store, overlap=w.overlap_builds, start_timeout_s=w.actor_start_timeout_s,
                              pool=runner_pool)
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
        "trials_per_node": per_node(runner.counts),
        # Runner "node/gpuN" on GPU nodes: one per GPU.
        "trials_per_runner": dict(runner.counts),
        "seconds": {"build": round(builder.seconds, 3), "run": round(runner.seconds, 3)},
    }, failure=lambda: runner.failure or builder.failure, pools=(builder.pool, runner.pool), check=runner.check,
        allow_runs=store.allow_runs)


def per_node(per_runner: dict[str, int]) -> dict[str, int]:
    """Trials per node from trials per runner ("node" or "node/gpuN")."""
    out: dict[str, int] = {}
    for slot, count in per_runner.items():
        node = slot.split("/", 1)[0]
        out[node] = out.get(node, 0) + count
    return out


def measure_default_schedules(tasks: list[ms.ExtractedTask], target: Target, database: ms.Database,
                              workers: Workers, ranker: Ranker | None = None) -> tuple[list[float | None], int]:
    """Measure each task's default schedule (dlight on CUDA; on CPU the register-blocked
    micro-kernel or the default sample) and store it as an ordinary record.

    Compilation then takes a tuned schedule only where it beat the default, so tuning never
    makes a kernel slower than a `--trials 0` module's (on CPU the search re-draws the
    micro-kernel's register block at random, so its first candidates can be slower than the
    analytic pick), and the search starts from a population that already holds that schedule.
    Returns each task's default time in seconds (None where the default did not build or run),
    and how many of those times came from the database.
    Not counted as trials. `ranker`: the family's cost model picks the CPU defaults, as
    compilation does for tasks without records. A default our database holds a time for already
    (the same schedule of the same workload, measured on this hardware) is not measured again.
    """
    times: list[float | None] = [None] * len(tasks)
    picked = []
    for i, task in enumerate(tasks):
        mod = task.dispatched[0]
        sch = default_schedule(mod["main"], target, ranker)
        if sch is not None:
            # Marked, so that the search never takes it for one of its own (its trace comes from
            # another design space: MetaSchedule's evolutionary search failed replaying a CPU
            # default with "args.size() == initial_indices_orig.size()") and a task that holds
            # only its default is still tuned by the next run.
            sch.annotate(sch.get_sblock("root"), DEFAULT_MARK, 1)
            if isinstance(database, SQLDatabase):
                times[i] = database.measured_default(mod, sch.trace)
                if times[i] is not None:
                    continue
            # The arguments the built kernel takes: with weights pre-packed (RewriteLayout), the
            # packed ones, as MetaSchedule's own candidates are measured.
            picked.append((i, mod, sch, ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)))
    reused = sum(t is not None for t in times)
    if not picked:
        return times, reused
    built = workers.builder.build([ms.builder.BuilderInput(sch.mod, target) for _, _, sch, _ in picked])
    ok = [(p, b) for p, b in zip(picked, built) if b.error_msg is None]
    device_type = "cuda" if target.kind.name == "cuda" else "cpu"
    futures = workers.runner.run([ms.runner.RunnerInput(b.artifact_path, device_type, p[3]) for p, b in ok])
    for ((i, mod, sch, args_info), b), future in zip(ok, futures):
        result = future.result()
        shutil.rmtree(os.path.dirname(str(b.artifact_path)), ignore_errors=True)
        if result.error_msg is not None or not result.run_secs:
            continue
        run_secs = [float(x) for x in result.run_secs]
        database.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, database.commit_workload(mod), run_secs, target, args_info))
        times[i] = sum(run_secs) / len(run_secs)
    return times, reused


def _unnamed_handlers_dropped() -> None:
    """MetaSchedule's logging set-up lists the names of the handlers its logger already has and
    fails on one without a name ("'NoneType' object has no attribute 'format'"), which the second
    tuning run of a process met on Python 3.12. Its own handlers all have names."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(logger.handlers):
        if handler.get_name() is None:
            logger.removeHandler(handler)


def _quiet_metaschedule_logs() -> None:
    """MetaSchedule logs each task to files under work_dir; keep its chatter off stdout."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    logger.propagate = False
    for handler in list(logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)


def tuning_cores(target: Target) -> int:
    """CPU cores for builders and the search: the CPU target's own, or (GPU) the host's."""
    cpu = target if target.kind.name == "llvm" else target.host
    if cpu is not None and "num-cores" in cpu.attrs:
        return int(cpu.attrs["num-cores"])
    return psutil.cpu_count(logical=False) or 1


# The first round (every task once) takes about this share of the budget; MetaSchedule's
# gradient task scheduler spends the rest where the weighted latency is.
FIRST_ROUND_SHARE = 4
# Fewer trials than this per round make each measured candidate pay for a whole evolutionary search.
MIN_TRIALS_PER_ITER = 8


def trials_per_iter(trials: int, tasks: int, cap: int, minimum: int = MIN_TRIALS_PER_ITER) -> int:
    """Trials a task measures per round: small enough that every task gets a first round within
    the budget and that the first round leaves about 3/4 of it to the gradient phase, at least
    `minimum` (or the even share where that is less), at most `cap`.

    A round used to be the even share (64 trials per task: 64 per round): the first round then
    spent the whole budget, every task got the same 64 trials, and on resnet50 the convolutions
    that held the time stayed at 51-66% of the FMA peak while small ones reached 100%. At 16
    trials per task the minimum (8) still makes the first round half the budget."""
    even = trials // max(1, tasks)
    return max(1, min(cap, max(min(even, minimum), even // FIRST_ROUND_SHARE)))


def round_minimum(settings: Settings, trained: bool) -> int:
    """The fewest trials per round. Each round of a task pays for one evolutionary search, so a
    round of fewer trials costs more per trial; a transferred search evolves a smaller population
    (`search.transferred_population_size`) and needs no random warm-up round, so its minimum may
    be lower (`search.transferred_min_trials_per_iter`)."""
    low = settings.search.transferred_min_trials_per_iter
    return low if trained and low is not None else MIN_TRIALS_PER_ITER


def search_config(settings: Settings, target: Target, trained: bool) -> SearchConfig:
    """The evolutionary search's settings for `target`. On CUDA, where nearly every random
    schedule fails the GPU checks, each round's initial population needs fewer valid random
    samples (`init_min_unmeasured_gpu`). Unless a trained cost model steers it from the start,
    each task's first round is random valid schedules (`SearchConfig.random_first_round`), and
    so is every round while the run's model has seen fewer than its warm-up samples: an untrained
    XGBoost model scores at random, so the evolution only spent time. On CPU the first round took
    ~110 s for squeezenet's 34 tasks, drawn at random ~20 s (`tuner run zoo:squeezenet --trials
    64`: 4 min 53 s, 2 min 58 s with the first round random, 1 min 23 s with every untrained
    round random; AMD EPYC znver4)."""
    gpu = target.kind.name == "cuda"
    population = settings.search.population_size
    if trained and settings.search.transferred_population_size is not None:
        population = settings.search.transferred_population_size
    eps = settings.search.transferred_eps_greedy if trained else None
    return SearchConfig(
        population_size=population,
        genetic_num_iters=settings.search.genetic_num_iters,
        init_min_unmeasured=settings.search.init_min_unmeasured_gpu if gpu else settings.search.init_min_unmeasured,
        random_first_round=not trained,
        **({"eps_greedy": eps} if eps is not None else {}),
    )


def seeded_tasks(tasks: list[ms.ExtractedTask], database: ms.Database) -> set[int]:
    """The tasks whose evolutionary search would start from records in the database."""
    return {i for i, task in enumerate(tasks) if has_own_records(database, task.dispatched[0])}


# Records of each kindred kernel a task may start from: with 4 kernels, 32 seeds, within the
# evolutionary search's 51 (a fifth of 256) population slots for records.
KINDRED_RECORDS_EACH = 8


def kindred_source(database: ms.Database, target: Target, workloads: int, measure_first: bool = False) -> Kindred | None:
    """Where the searches find kindred kernels' schedules: the tuning database's records of the
    `workloads` nearest kernels of each task's structure (CPU; None when off). CUDA's spaces
    are left out: refitted GPU tilings were never measured against its random first round."""
    if workloads <= 0 or target.kind.name != "llvm" or not isinstance(database, SQLDatabase):
        return None
    return Kindred(lambda mod: database.kindred_traces(mod, workloads, KINDRED_RECORDS_EACH),
                   limit=workloads * KINDRED_RECORDS_EACH, measure_first=measure_first)


def tuning_contexts(tasks: list[ms.ExtractedTask], target: Target, loggers: list[logging.Logger], seed: int,
                    cfg: SearchConfig, cores: int, progress: Progress,
                    untrained: Callable[[], bool] | None = None,
                    seeded: Collection[int] = (),
                    kindred: Kindred | None = None) -> tuple[list[ms.TuneContext], list[int]]:
    """One TuneContext per task whose design space can be generated, and those tasks' indices.

    The tasks in `seeded` are searched without random rounds (`cfg.random_first_round` off), so
    their evolution starts from the records the database holds for them; with `kindred`, a task
    without records starts from refitted schedules of kindred kernels (schedules/kindred.py).

    Each task's design spaces are drawn here, once, and the context searches exactly those (see
    `design_spaces`). TVM's tensor-core rules fail on some fp16 kernels: those tasks are searched
    in the plain CUDA space; a task with no usable space at all is left out (it keeps its default
    schedule) instead of ending the run."""
    def context(task: ms.ExtractedTask, logger: logging.Logger, rand_state: int,
                space: ms.SpaceGenerator, searched: SearchConfig | None = None) -> ms.TuneContext:
        """A probe (draws the design spaces) or, `searched` (its config), the context the scheduler tunes."""
        return ms.TuneContext(mod=task.dispatched[0], target=task.target, space_generator=space,
                              search_strategy=search_strategy(searched, ended, interrupt_requested, untrained, kindred)
                              if searched is not None else None,
                              task_name=task.task_name, logger=logger, rand_state=rand_state, num_threads=cores)

    def ended(task_name: str, error: str) -> None:
        progress.message(f"{task_name}: its search failed ({error}); the task keeps the best schedule measured so far")

    contexts, kept = [], []
    for i, (task, logger, rand_state) in enumerate(zip(tasks, loggers, fork_seed(seed, n=len(tasks)))):
        if interrupt_requested():
            break
        mod = task.dispatched[0]
        tensor_cores = wants_tensor_cores(target, mod)
        probe = context(task, logger, rand_state, space_generator(target, mod))
        spaces = design_spaces(probe)
        problem = "does not generate" if spaces is None else None
        if spaces is not None and tensor_cores and not sample_builds(spaces, probe):
            problem = "does not build"
        if problem is not None:
            tensor_cores = False
            spaces = design_spaces(context(task, logger, rand_state, space_generator(target, mod, tensor_cores=False)))
            if spaces is None:
                progress.message(f"{task.task_name}: no design space could be generated; it keeps its default schedule")
                continue
            progress.message(f"{task.task_name}: the tensor-core space {problem}; searching the plain CUDA space")
        mine = replace(cfg, random_first_round=False) if i in seeded else cfg
        contexts.append(context(task, logger, rand_state, fixed_space(spaces, target, mod, tensor_cores), searched=mine))
        kept.append(i)
    return contexts, kept


def tune(
    tasks: list[ms.ExtractedTask],
    target: Target,
    database: ms.Database,
    trials: int,
    settings: Settings,
    seed: int,
    work_dir: Path,
    progress: Progress,
    workers: Workers | None = None,
) -> TuneResult:
    """Spend `trials` measurements over `tasks`; every record lands in `database` as measured."""
    work_dir.mkdir(parents=True, exist_ok=True)
    cores = tuning_cores(target)
    _unnamed_handlers_dropped()
    with contextlib.redirect_stdout(sys.stderr):  # its set-up logs one line to the console
        loggers = get_loggers_from_work_dir(str(work_dir), [t.task_name for t in tasks])
    _quiet_metaschedule_logs()
    owned = workers is None  # ours to close; a caller's workers are the caller's
    # Worker processes start (import TVM) in the background while the contexts are made.
    workers = workers or local_workers(settings, cores)
    defaults: list[float | None] = [None] * len(tasks)
    checks = CheckStats()
    final = FinalTiming()
    start = StartModel(None, {"transferred": False})
    kindred: Kindred | None = None
    # Ctrl-C is noted, not raised, until the block ends: raised inside TVM's calls it was
    # swallowed as a failed design space or a failed draw (the run then went on, deaf to a
    # second Ctrl-C) or killed the process from a C++ frame. The searches end at their next
    # round instead (`interrupt_requested`), and the KeyboardInterrupt is raised after the
    # workers are closed.
    with deferred_interrupts():
        try:
            # The family's model trained on the database, where there is one (cost_model_training.py).
            if isinstance(database, SQLDatabase) and settings.cost_model.transfer:
                start = start_model(database, progress)
            cfg = search_config(settings, target, trained=start.trained is not None)
            model = cost_model(cores, start.trained, settings.cost_model.retrain)
            # On CPU a task with records of its own (warm start, an earlier search) evolves from
            # them; CUDA's random first round stays (its evolution's own draws are the slow part).
            seeded = seeded_tasks(tasks, database) if cfg.random_first_round and target.kind.name == "llvm" else set()
            kindred = kindred_source(database, target, settings.kindred_workloads, settings.kindred_first_round)
            contexts, kept = tuning_contexts(tasks, target, loggers, seed, cfg, cores, progress,
                                             lambda: scores_at_random(model), seeded, kindred)
            weights = [float(tasks[i].weight) for i in kept]
            if not interrupt_requested():
                progress.message(f"measuring the default schedules of {len(tasks)} task(s)")
                t0 = time.perf_counter()
                ranker = (default_ranker(start.trained, target)
                          if start.trained is not None and settings.cost_model.rank_defaults else None)
                defaults, reused = measure_default_schedules(tasks, target, database, workers, ranker)
                progress.message(f"{sum(d is not None for d in defaults) - reused} default schedule(s) measured in "
                                 f"{time.perf_counter() - t0:.1f} s" + (f", {reused} known from earlier runs" if reused else ""))
            callback = ProgressCallback(weights, [defaults[i] for i in kept], progress.advance)
            progress.start(trials, len(kept))
            # The estimate before the first trial: the default schedules' (a curve of the search
            # starts where the search did, not at its first measured round).
            progress.advance(0, callback.estimate_ms())
            if contexts and not interrupt_requested():  # none when no design space could be generated
                ms.tune_tasks(
                    tasks=contexts,
                    task_weights=weights,
                    work_dir=str(work_dir),
                    max_trials_global=trials,
                    num_trials_per_iter=trials_per_iter(trials, len(tasks), settings.search.max_trials_per_iter,
                                                        round_minimum(settings, start.trained is not None)),
                    builder=workers.builder,
                    runner=workers.runner,
                    database=database,
                    cost_model=model,
                    measure_callbacks=[*ms.MeasureCallback.create("default"), callback],
                    task_scheduler=ms.task_scheduler.GradientBased(seed=seed),
                )
            if isinstance(database, SQLDatabase) and not interrupt_requested():
                # Which record each task is served: its best few timed again side by side.
                final = time_finalists(tasks, target, database, workers, settings, progress)
            if isinstance(database, SQLDatabase) and not interrupt_requested():
                # Before a record the search found can be served, on the hardware it ran on.
                # (Only our database keeps what a check found.)
                checks = check_records(tasks, target, database, workers.check, settings, progress)
            cluster = workers.describe()
        finally:
            progress.stop()
            if owned:
                workers.close()
    described = dict(start.describe)
    if kindred is not None:
        described["kindred_seeded_tasks"] = len(kindred.seeded)
    return TuneResult(trials=callback.trials, per_task_trials=callback.per_task_trials, cluster=cluster,
                      defaults_measured=sum(d is not None for d in defaults), checks=checks,
                      cost_model=described, final_timing=final)
