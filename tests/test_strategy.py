"""The search strategy: an error in one task's search ends that task, not the tuning run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy
from tvm.target import Target

from tests.tir_helpers import TARGET, matmul
from tuner.search import tuning
from tuner.config import Settings
from tuner.progress import SilentProgress
from tuner.schedules import strategy
from tuner.schedules.space import SearchConfig

# How many times each task's candidate generation raises before it works.
FAILURES = {"always": 1000, "once": 1}


@derived_object
class Flaky(PySearchStrategy):
    """`make_inner()` (MetaSchedule's evolutionary search), raising as TVM 0.27's tensor-core
    replay did (ScheduleError in compute-at) the first FAILURES[task name] times it is asked for
    candidates; each ask is appended to `calls`. `broken_pre_tuning`: its pre-tuning raises."""

    def __init__(self, make_inner: Callable[[], ms.SearchStrategy], calls: list[int] | None = None,
                 broken_pre_tuning: bool = False) -> None:
        self.make_inner = make_inner
        self.inner = make_inner()
        self.calls = [] if calls is None else calls
        self.broken_pre_tuning = broken_pre_tuning
        self.left = 0

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        self.left = FAILURES.get(str(context.task_name), 0)
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, *args) -> None:  # noqa: ANN002
        if self.broken_pre_tuning:
            raise RuntimeError("InternalError: Check failed: the design space has no trace to replay")
        self.inner.pre_tuning(*args)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):  # noqa: ANN201
        self.calls.append(1)
        if self.left > 0:
            self.left -= 1
            raise RuntimeError("ScheduleError: An error occurred in the schedule primitive 'compute-at'.\n"
                               "Error message: The scope s_tir.SBlock#0 is not a stage pipeline.")
        return self.inner.generate_measure_candidates()

    def notify_runner_results(self, candidates, results) -> None:  # noqa: ANN001
        self.inner.notify_runner_results(candidates, results)

    def clone(self) -> ms.SearchStrategy:
        return Flaky(self.make_inner, self.calls, self.broken_pre_tuning)


def _evolutionary(config: SearchConfig) -> Callable[[], ms.SearchStrategy]:
    return lambda: ms.search_strategy.EvolutionarySearch(population_size=config.population_size,
                                                         init_min_unmeasured=config.init_min_unmeasured,
                                                         genetic_num_iters=config.genetic_num_iters)


class Messages(SilentProgress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


class Curve(Messages):
    def __init__(self) -> None:
        super().__init__()
        self.points: list[tuple[int, float | None]] = []

    def advance(self, trials_done: int, best_ms: float | None) -> None:
        self.points.append((trials_done, best_ms))


def test_a_task_whose_search_raises_ends_alone(monkeypatch: pytest.MonkeyPatch, settings: Settings,
                                               tmp_path: Path) -> None:
    monkeypatch.setattr(tuning, "search_strategy",
                        lambda cfg, report=None, stop=None, untrained=None, kindred=None: strategy.ContainedSearch(
                            lambda: Flaky(_evolutionary(cfg)), report, stop))
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
    progress = Curve()
    result = tuning.tune(tasks, target, ms.database.MemoryDatabase(), 64, settings, 0, tmp_path / "logs", progress)
    heavy, light = result.per_task_trials
    # The light task's one round may come short of MIN_TRIALS_PER_ITER: its random draws (made on
    # threads, in no fixed order) can repeat a kernel of its small space, which is dropped.
    assert heavy + light >= 64 and 0 < light <= tuning.MIN_TRIALS_PER_ITER and heavy > 3 * light, result.per_task_trials
    # The estimate starts from the measured default schedules, before any trial, and the search
    # only ever lowers it (each task counts with the better of its default and its best trial).
    (first_trials, first_ms), *rest = progress.points
    assert first_trials == 0 and first_ms is not None and result.defaults_measured == 2
    estimates = [first_ms, *(later for _, later in rest)]
    assert all(b <= a for a, b in zip(estimates, estimates[1:])), estimates


def test_a_default_schedule_is_measured_once(settings: Settings, sqlite_url: str) -> None:
    """A second run on the same database takes each task's default time from the record the
    first one stored: the same start for both, and no second measurement."""
    from tuner.pipeline import open_database

    target = Target(TARGET)
    tasks = [ms.ExtractedTask(f"mm{n}", matmul(n), target, [matmul(n)], 1) for n in (16, 24)]
    database = open_database(sqlite_url, TARGET)
    workers = tuning.local_workers(settings, 1)
    try:
        first, reused_first = tuning.measure_default_schedules(tasks, target, database, workers)
        second, reused_second = tuning.measure_default_schedules(tasks, target, database, workers)
    finally:
        workers.close()
    assert None not in first and reused_first == 0
    assert second == pytest.approx(first) and reused_second == 2
    assert len(database) == 2  # one record per default, not two


def _search_with_first_round(first: Callable[[], ms.SearchStrategy],
                             untrained: Callable[[], bool] | None = None) -> tuple[int, int]:
    """(rounds, trials drawn) of one task's ContainedSearch with a budget of 12 (rounds of 4) and
    `first` as its first-round strategy (and of later rounds while `untrained()`)."""
    from tuner.schedules.space import space_generator

    target = Target(TARGET)
    search = strategy.ContainedSearch(
        lambda: ms.search_strategy.EvolutionarySearch(population_size=16, init_min_unmeasured=4, genetic_num_iters=1),
        make_first=first, untrained=untrained)
    context = ms.TuneContext(mod=matmul(32), target=target, space_generator=space_generator(target),
                             search_strategy=search, task_name="t", num_threads=1)
    search.pre_tuning(12, 4, context.generate_design_space(), ms.database.MemoryDatabase(),
                      ms.cost_model.RandomModel())
    drawn, rounds = 0, 0
    while (candidates := search.generate_measure_candidates()) is not None:
        rounds += 1
        drawn += len(candidates)
        search.notify_runner_results(candidates, [ms.runner.RunnerResult(run_secs=[1e-3], error_msg=None)
                                                  for _ in candidates])
    search.post_tuning()
    return rounds, drawn


def test_a_random_first_round_counts_against_the_evolutionary_budget() -> None:
    calls: list[int] = []
    rounds, drawn = _search_with_first_round(lambda: Flaky(lambda: ms.search_strategy.ReplayTrace(max_fail_count=16), calls))
    # The first round was the random one, the later ones the evolutionary search's, and the
    # budget of 12 trials held across both.
    assert calls == [1] and rounds >= 2 and drawn == 12


def test_rounds_stay_random_while_the_cost_model_scores_at_random() -> None:
    """The model learns after the second round: rounds 1-2 are ReplayTrace's (each a fresh draw:
    it counted its own trials; the second one's kernels measured in the first are dropped, so
    the evolutionary search may need two rounds for the rest), 12 trials in all."""
    calls: list[int] = []
    asked: list[int] = []

    def untrained() -> bool:
        asked.append(1)
        return len(asked) < 2  # asked from the second round on: true once, then false

    rounds, drawn = _search_with_first_round(
        lambda: Flaky(lambda: ms.search_strategy.ReplayTrace(max_fail_count=16), calls), untrained)
    assert calls == [1, 1] and rounds >= 3 and drawn == 12
    # Without the predicate only the first round is random.
    calls.clear()
    rounds, drawn = _search_with_first_round(lambda: Flaky(lambda: ms.search_strategy.ReplayTrace(max_fail_count=16),
                                                           calls))
    assert calls == [1] and rounds == 3 and drawn == 12


@derived_object
class Repeating(PySearchStrategy):
    """Draws what `make_inner()` draws, each candidate twice, and its first round's again in every
    later round: what ReplayTrace may do on a small space."""

    def __init__(self, make_inner: Callable[[], ms.SearchStrategy], calls: list[int]) -> None:
        self.make_inner = make_inner
        self.inner = make_inner()
        self.calls = calls
        self.first_round: list = []

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, *args) -> None:  # noqa: ANN002
        self.inner.pre_tuning(*args)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):  # noqa: ANN201
        self.calls.append(1)
        self.first_round = self.first_round or list(self.inner.generate_measure_candidates() or [])
        return [c for c in self.first_round for _ in range(2)]

    def notify_runner_results(self, candidates, results) -> None:  # noqa: ANN001
        self.inner.notify_runner_results(candidates, results)

    def clone(self) -> ms.SearchStrategy:
        return Repeating(self.make_inner, self.calls)


def test_random_rounds_never_measure_a_kernel_twice() -> None:
    calls: list[int] = []
    rounds, drawn = _search_with_first_round(
        lambda: Repeating(lambda: ms.search_strategy.ReplayTrace(max_fail_count=16), calls), lambda: True)
    # Round 1: the 4 drawn once each; round 2 drew only those again, so the evolutionary search
    # drew it; the budget of 12 still held.
    assert calls[:2] == [1, 1] and drawn == 12 and rounds == 3


def test_a_first_round_strategy_that_fails_to_start_leaves_the_task_to_the_evolutionary_search() -> None:
    calls: list[int] = []
    rounds, drawn = _search_with_first_round(
        lambda: Flaky(lambda: ms.search_strategy.ReplayTrace(max_fail_count=16), calls, broken_pre_tuning=True))
    # Never asked for candidates; the task still spent its whole budget.
    assert calls == [] and rounds >= 1 and drawn == 12


def test_searches_start_random_unless_a_trained_model_steers_them(settings: Settings) -> None:
    cuda = Target({"kind": "cuda", "arch": "sm_90", "max_num_threads": 1024, "host": TARGET})
    cpu = Target(TARGET)
    gpu_config = tuning.search_config(settings, cuda, trained=False)
    assert gpu_config.random_first_round
    assert gpu_config.init_min_unmeasured == settings.search.init_min_unmeasured_gpu
    assert not tuning.search_config(settings, cuda, trained=True).random_first_round
    cpu_config = tuning.search_config(settings, cpu, trained=False)
    assert cpu_config.random_first_round and cpu_config.init_min_unmeasured == settings.search.init_min_unmeasured
    assert not tuning.search_config(settings, cpu, trained=True).random_first_round
    # The transferred model's own population, where one is configured; a cold search keeps the plain one.
    small = settings.model_copy(update={"search": settings.search.model_copy(update={"transferred_population_size": 8})})
    assert tuning.search_config(small, cpu, trained=True).population_size == 8
    assert tuning.search_config(small, cpu, trained=False).population_size == settings.search.population_size
    unset = settings.model_copy(update={"search": settings.search.model_copy(update={"transferred_population_size": None})})
    assert tuning.search_config(unset, cpu, trained=True).population_size == settings.search.population_size
    # ... and its own fewest trials per round: at 16 trials per task a cold round is 8 (half the
    # budget for the first round), a transferred one may be 4 (the quarter the rule aims at).
    assert tuning.trials_per_iter(16 * 35, 35, 64, tuning.MIN_TRIALS_PER_ITER) == 8
    assert tuning.trials_per_iter(16 * 35, 35, 64, 4) == 4 and tuning.trials_per_iter(64 * 35, 35, 64, 4) == 16
    lower = settings.model_copy(update={"search": settings.search.model_copy(update={"transferred_min_trials_per_iter": 4})})
    unset = settings.model_copy(update={"search": settings.search.model_copy(update={"transferred_min_trials_per_iter": None})})
    assert tuning.round_minimum(lower, trained=True) == 4
    assert tuning.round_minimum(lower, trained=False) == tuning.round_minimum(unset, trained=True) == tuning.MIN_TRIALS_PER_ITER
    # ... and its own share of random candidates per round; a cold search keeps MetaSchedule's.
    eps = settings.model_copy(update={"search": settings.search.model_copy(update={"transferred_eps_greedy": 0.25})})
    assert tuning.search_config(eps, cpu, trained=True).eps_greedy == 0.25
    assert tuning.search_config(eps, cpu, trained=False).eps_greedy == SearchConfig().eps_greedy == 0.05
    unset = settings.model_copy(update={"search": settings.search.model_copy(update={"transferred_eps_greedy": None})})
    assert tuning.search_config(unset, cpu, trained=True).eps_greedy == 0.05
