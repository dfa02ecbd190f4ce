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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.search_strategy import MeasureCandidate, PySearchStrategy

if TYPE_CHECKING:
    from tvm.s_tir import Schedule

# Draws per round before a task's search is ended: the failures seen are rare per draw.
ATTEMPTS = 3


@derived_object
class ContainedSearch(PySearchStrategy):
    """Delegates to `make_inner()` (an EvolutionarySearch); an exception from its pre-tuning or
    from generating candidates is retried `ATTEMPTS` times per round, then ends this task's
    search, reported through `report(task name, error)`. Once `stop()` is true every task's
    search ends."""

    def __init__(self, make_inner: Callable[[], ms.SearchStrategy],
                 report: Callable[[str, str], None] | None = None,
                 stop: Callable[[], bool] | None = None) -> None:
        self.make_inner = make_inner
        self.report = report
        self.stop = stop
        self.inner = make_inner()
        self.task_name = "task"
        self.ended = False

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        self.task_name = str(context.task_name)
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials: int, num_trials_per_iter: int, design_spaces: list[Schedule],
                   database: ms.Database | None = None, cost_model: ms.CostModel | None = None) -> None:
        self.ended = False
        try:
            self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)
        except Exception as exc:  # noqa: BLE001 - TVM raises ScheduleError, TVMError, ...
            self._end(exc)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self) -> list[MeasureCandidate] | None:
        # `stop()`: the user asked the run to stop (Ctrl-C). Ending every task here lets the
        # task scheduler return normally; an exception raised inside its C++ loop can kill it.
        if self.ended or (self.stop is not None and self.stop()):
            return None
        for attempt in range(ATTEMPTS):
            try:
                return self.inner.generate_measure_candidates()
            except Exception as exc:  # noqa: BLE001 - TVM raises ScheduleError, TVMError, ...
                if attempt == ATTEMPTS - 1:
                    self._end(exc)
        return None

    def notify_runner_results(self, measure_candidates: list[MeasureCandidate], results: list[ms.runner.RunnerResult]) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self) -> ms.SearchStrategy:
        return ContainedSearch(self.make_inner, self.report, self.stop)

    def _end(self, exc: Exception) -> None:
        self.ended = True
        if self.report is not None:
            lines = [line.strip() for line in str(exc).strip().splitlines()]
            why = [line for line in lines if line.startswith("Error message:")]
            text = " ".join(lines[:1] + why[:1]) or type(exc).__name__
            self.report(self.task_name, f"{type(exc).__name__}: {text[:300]}")
