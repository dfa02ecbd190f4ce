"""The search strategy: an error in one task's search ends that task, not the tuning run."""

from __future__ import annotations

from pathlib import Path

import pytest
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy
from tvm.target import Target

from tests.tir_helpers import TARGET, matmul
from tuner import tuning
from tuner.config import Settings
from tuner.progress import SilentProgress
from tuner.schedules import strategy
from tuner.schedules.space import SearchConfig

# How many times each task's candidate generation raises before it works.
FAILURES = {"always": 1000, "once": 1}


@derived_object
class Flaky(PySearchStrategy):
    """MetaSchedule's evolutionary search, raising as TVM 0.27's tensor-core replay did
    (ScheduleError in compute-at) the first FAILURES[task name] times it is asked for candidates."""

    def __init__(self, config: SearchConfig) -> None:
        self.config = config
        self.inner = ms.search_strategy.EvolutionarySearch(population_size=config.population_size,
                                                           init_min_unmeasured=config.init_min_unmeasured,
                                                           genetic_num_iters=config.genetic_num_iters)
        self.left = 0

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        self.left = FAILURES[str(context.task_name)]
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, *args) -> None:  # noqa: ANN002
        self.inner.pre_tuning(*args)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):  # noqa: ANN201
        if self.left > 0:
            self.left -= 1
            raise RuntimeError("ScheduleError: An error occurred in the schedule primitive 'compute-at'.\n"
                               "Error message: The scope s_tir.SBlock#0 is not a stage pipeline.")
        return self.inner.generate_measure_candidates()

    def notify_runner_results(self, candidates, results) -> None:  # noqa: ANN001
        self.inner.notify_runner_results(candidates, results)

    def clone(self) -> ms.SearchStrategy:
        return Flaky(self.config)


class Messages(SilentProgress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def test_a_task_whose_search_raises_ends_alone(monkeypatch: pytest.MonkeyPatch, settings: Settings,
                                               tmp_path: Path) -> None:
    monkeypatch.setattr(tuning, "search_strategy",
                        lambda cfg, report=None, stop=None: strategy.ContainedSearch(lambda: Flaky(cfg), report, stop))
    target = Target(TARGET)
    tasks = [ms.ExtractedTask(name, mod, target, [mod], 1)
             for name, mod in (("always", matmul(32)), ("once", matmul(48)))]
    database = ms.database.MemoryDatabase()
    progress = Messages()
    result = tuning.tune(tasks, target, database, 16, settings, 0, tmp_path / "logs", progress)
    # The run went on: the task whose draws kept failing ended with no trials, and its error is
    # named; the task whose first draw failed was retried and spent the budget.
    assert result.per_task_trials[0] == 0 and result.per_task_trials[1] > 0
    ended = [line for line in progress.lines if "its search failed" in line]
    assert len(ended) == 1 and ended[0].startswith("always: ")
    assert "compute-at" in ended[0] and "not a stage pipeline" in ended[0]
    # Records: the trials, and each task's default schedule, measured before the search.
    assert result.defaults_measured == 2
    assert len(database.get_all_tuning_records()) == result.per_task_trials[1] + result.defaults_measured


def test_the_budget_goes_where_the_time_is(settings: Settings, tmp_path: Path) -> None:
    """After one round of every task, MetaSchedule's gradient scheduler gives the rest of the
    budget to the task that holds the time. With the budget's even share as the round size
    (64 trials for 2 tasks: 32 each) the first round spent everything, 32 and 32."""
    settings = settings.model_copy(update={"search": settings.search.model_copy(update={"max_trials_per_iter": 64})})
    target = Target(TARGET)
    tasks = [ms.ExtractedTask(name, mod, target, [mod], 1) for name, mod in (("heavy", matmul(128)), ("light", matmul(8)))]
    assert tuning.trials_per_iter(64, 2, 64) == tuning.MIN_TRIALS_PER_ITER
    result = tuning.tune(tasks, target, ms.database.MemoryDatabase(), 64, settings, 0, tmp_path / "logs", Messages())
    heavy, light = result.per_task_trials
    assert heavy + light >= 64 and light == tuning.MIN_TRIALS_PER_ITER and heavy > 3 * light, result.per_task_trials
