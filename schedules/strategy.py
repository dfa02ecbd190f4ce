"""The search strategy: MetaSchedule's evolutionary search, with its errors contained to a task.

Inside the task scheduler, an exception raised by one task's search ends the whole tuning run,
every other task's budget included. TVM 0.27 raises ScheduleErrors from random draws of
tensor-core spaces ("not a stage pipeline", in compute-at): an H100 run of resnet50 in fp16
ended so after its 58 defaults were measured. That draw was the scheduler's own design-space
generation, which `space.fixed_space` now does before tuning; replays of such spaces fail too
(MetaSchedule catches those where it samples, with a warning). Whatever still escapes the
search's own calls (pre-tuning, sampling, evolution, database picks) is retried here, and a task
whose search keeps failing is ended (it keeps the records it has: on CUDA at least its default
schedule) while the others go on.

It can also give each task's first round to another strategy (`make_first`, random valid
schedules: `space.search_strategy`), while a cost model that has seen no measurement would only
steer the evolution at random; with `untrained`, every later round too while that says the cost
model still scores at random. Those candidates count as the evolutionary search's own trials.
ReplayTrace draws each round afresh and may draw a schedule again (a small kernel's register-
blocked space has a few dozen): what this task measured already is dropped from its draws, as
the evolutionary search drops it from its own.
If that strategy fails to start (its pre-tuning raises), the evolutionary search draws the first
round too: the task is not ended for it.

With `kindred` (schedules/kindred.py), a task no search has measured starts from the best
schedules of the nearest kernels of its structure in the database, refitted to its shape: they
join the evolutionary search's initial population (`SeededDatabase`), and where the first round
would be random they are that round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tvm_ffi import structural_hash
from tvm.ir import IRModule
from tvm.ir.utils import derived_object
from tvm.s_tir import Schedule, Trace
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.search_strategy import MeasureCandidate, PySearchStrategy

from .kindred import SeededDatabase, seeds_for

# Draws per round before a task's search is ended: the failures seen are rare per draw.
ATTEMPTS = 3


def has_own_records(database: ms.Database, mod: IRModule) -> bool:
    """Whether the evolutionary search of `mod` would start from records in `database` (what
    its `get_top_k` gives: earlier searches here, or warm-start records of compatible hardware)."""
    return database.has_workload(mod) and bool(database.get_top_k(database.commit_workload(mod), 1))


@dataclass
class Kindred:
    """Where a task's search finds schedules of kindred kernels: `traces(mod)` gives the
    database's (best first); at most `limit` refitted ones seed a task. They are its first round
    where that round would be random, and with `measure_first` also where a trained cost model
    steers it (else they only join its population). `seeded` collects, per task name, how many
    seeds a task got (for the report)."""

    traces: Callable[[IRModule], list[Trace]]
    limit: int
    measure_first: bool = False
    seeded: dict[str, int] = field(default_factory=dict)


@derived_object
class ContainedSearch(PySearchStrategy):
    """Delegates to `make_inner()` (an EvolutionarySearch); an exception from its pre-tuning or
    from generating candidates is retried `ATTEMPTS` times per round, then ends this task's
    search, reported through `report(task name, error)`. Once `stop()` is true every task's
    search ends. `make_first`, if given, makes the strategy of each task's first round, and of
    each later one while `untrained()` is true."""

    def __init__(self, make_inner: Callable[[], ms.SearchStrategy],
                 report: Callable[[str, str], None] | None = None,
                 stop: Callable[[], bool] | None = None,
                 make_first: Callable[[], ms.SearchStrategy] | None = None,
                 untrained: Callable[[], bool] | None = None,
                 kindred: Kindred | None = None) -> None:
        self.make_inner = make_inner
        self.kindred = kindred
        self.make_first = make_first
        self.untrained = untrained
        self.report = report
        self.stop = stop
        self.inner = make_inner()
        self.first = make_first() if make_first is not None else None
        self.first_started = False  # `first` started (its pre-tuning did not raise)
        self.first_pending = False  # the first round is still to be drawn by `first`
        self.first_drew = False  # the round now measured was drawn by `first`
        self.measured: set[int] = set()  # structural hashes of the kernels this task measured
        self.task_name = "task"
        self.ended = False
        self.mod: IRModule | None = None
        self.postprocs: list[ms.Postproc] = []
        self.seed_round: list[MeasureCandidate] = []  # kindred seeds measured as the first round

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        self.task_name = str(context.task_name)
        self.mod = context.mod
        self.postprocs = list(context.space_generator.postprocs) if context.space_generator is not None else []
        self.inner._initialize_with_tune_context(context)
        if self.first is not None:
            self.first._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials: int, num_trials_per_iter: int, design_spaces: list[Schedule],
                   database: ms.Database | None = None, cost_model: ms.CostModel | None = None) -> None:
        self.ended = False
        self.first_started = self.first_pending = False
        self.measured = set()
        self.seed_round = []
        seeds = self._kindred_seeds(design_spaces, database)
        if seeds:
            database = SeededDatabase(database, seeds)
        try:
            self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)
        except Exception as exc:  # noqa: BLE001 - TVM raises ScheduleError, TVMError, ...
            self._end(exc)
            return
        if self.first is not None:
            try:
                self.first.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)
                self.first_started = self.first_pending = True
            except Exception:  # noqa: BLE001 - the evolutionary search draws the first round too
                pass
        if seeds and (self.first_started or self.kindred.measure_first):
            # Where an untrained model would steer the evolution at random, or when asked to.
            self.seed_round = self._candidates(seeds[:num_trials_per_iter])

    def post_tuning(self) -> None:
        self.inner.post_tuning()
        if self.first_started:
            self.first.post_tuning()

    def generate_measure_candidates(self) -> list[MeasureCandidate] | None:
        # `stop()`: the user asked the run to stop (Ctrl-C). Ending every task here lets the
        # task scheduler return normally; an exception raised inside its C++ loop can kill it.
        if self.ended or (self.stop is not None and self.stop()):
            return None
        self.first_drew = False
        if self.seed_round:
            self.first_pending = False
            fresh, self.seed_round = self.seed_round, []
            return fresh
        if self.first_pending or (self.first_started and self.untrained is not None and self.untrained()):
            self.first_pending = False
            try:
                drawn = self.first.generate_measure_candidates()
            except Exception:  # noqa: BLE001 - the evolutionary search draws this round instead
                drawn = None
            fresh = self._unmeasured(drawn or [])
            if fresh:
                self.first_drew = True
                return fresh
        for attempt in range(ATTEMPTS):
            try:
                return self.inner.generate_measure_candidates()
            except Exception as exc:  # noqa: BLE001 - TVM raises ScheduleError, TVMError, ...
                if attempt == ATTEMPTS - 1:
                    self._end(exc)
        return None

    def notify_runner_results(self, measure_candidates: list[MeasureCandidate], results: list[ms.runner.RunnerResult]) -> None:
        # Also after the first round: the evolutionary search counts these trials as its own
        # (its budget), and learns nothing else from them but through the database and the
        # cost model, which the task scheduler updates.
        self.inner.notify_runner_results(measure_candidates, results)
        if self.first_started:  # only random rounds need them (`_unmeasured`)
            self.measured.update(structural_hash(c.sch.mod) for c in measure_candidates)
        if self.first_drew:  # and `first` counts its own draws (ReplayTrace's next round)
            self.first.notify_runner_results(measure_candidates, results)

    def _kindred_seeds(self, spaces: list[Schedule], database: ms.Database | None) -> list[Trace]:
        """Refitted traces of kindred kernels for a task that has no record of its own."""
        if self.kindred is None or self.mod is None or database is None or self.kindred.limit <= 0:
            return []
        try:
            if has_own_records(database, self.mod):
                return []
            seeds = seeds_for(self.mod, spaces, self.kindred.traces(self.mod), self.kindred.limit)
        except Exception:  # noqa: BLE001 - a seed is a hint: the search goes on without it
            return []
        if seeds:
            self.kindred.seeded[self.task_name] = len(seeds)
        return seeds

    def _candidates(self, traces: list[Trace]) -> list[MeasureCandidate]:
        """The traces as measurable candidates (post-processed; those the postprocessors
        reject are dropped)."""
        out = []
        for trace in traces:
            sch = Schedule(self.mod)
            try:
                trace.apply_to_schedule(sch, remove_postproc=True)
                sch.enter_postproc()
                if all(p.apply(sch) for p in self.postprocs):
                    out.append(MeasureCandidate(sch, ArgInfo.from_entry_func(sch.mod, remove_preproc=True)))
            except Exception:  # noqa: BLE001 - TVM raises ScheduleError, TVMError, ...
                continue
        return self._unmeasured(out)

    def _unmeasured(self, drawn: list[MeasureCandidate]) -> list[MeasureCandidate]:
        """`drawn` without the kernels measured before or drawn twice."""
        fresh, seen = [], set(self.measured)
        for candidate in drawn:
            key = structural_hash(candidate.sch.mod)
            if key not in seen:
                seen.add(key)
                fresh.append(candidate)
        return fresh

    def clone(self) -> ms.SearchStrategy:
        return ContainedSearch(self.make_inner, self.report, self.stop, self.make_first, self.untrained, self.kindred)

    def _end(self, exc: Exception) -> None:
        self.ended = True
        if self.report is not None:
            lines = [line.strip() for line in str(exc).strip().splitlines()]
            why = [line for line in lines if line.startswith("Error message:")]
            text = " ".join(lines[:1] + why[:1]) or type(exc).__name__
            self.report(self.task_name, f"{type(exc).__name__}: {text[:300]}")
