"""Progress of a tuning run, fed by a MetaSchedule measure callback.

The pipeline talks to a `Progress`; the CLI picks a rich bar on a terminal and plain log lines
otherwise (and the service will pick its own, e.g. server-sent events).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback


class Progress(Protocol):
    def plan(self, tasks: int, from_db: int, from_other_teams: int, to_tune: int, warm: int,
             trials: int) -> None: ...
    def start(self, total_trials: int, tasks: int) -> None: ...
    def advance(self, trials_done: int, best_ms: float | None) -> None: ...
    def message(self, text: str) -> None: ...
    def stop(self) -> None: ...


def plan_text(tasks: int, from_db: int, from_other_teams: int, to_tune: int, warm: int) -> str:
    return (f"{tasks} task(s): {from_db} served from the database ({from_other_teams} from other "
            f"teams), {to_tune} to tune ({warm} warm-started from compatible hardware)")


class SilentProgress:
    def plan(self, tasks: int, from_db: int, from_other_teams: int, to_tune: int, warm: int,
             trials: int) -> None:
        pass

    def start(self, total_trials: int, tasks: int) -> None:
        pass

    def advance(self, trials_done: int, best_ms: float | None) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def stop(self) -> None:
        pass


class LogProgress:
    """Plain lines on stderr, at most one every `interval_s` seconds (CI logs, pipes), and the line
    that reaches the budget at once. (Every call after the budget was reached once printed: a
    squeezenet run repeated "trials 64/64" 44 times while its last round finished.)"""

    def __init__(self, interval_s: float = 5.0, stream=sys.stderr) -> None:  # noqa: ANN001
        self.interval_s = interval_s
        self.stream = stream
        self.total = 0
        self.t0 = time.monotonic()
        self.last = 0.0
        self.shown = 0  # trials in the last line printed

    def plan(self, tasks: int, from_db: int, from_other_teams: int, to_tune: int, warm: int,
             trials: int) -> None:
        self.message(plan_text(tasks, from_db, from_other_teams, to_tune, warm))

    def start(self, total_trials: int, tasks: int) -> None:
        self.total, self.t0, self.shown = total_trials, time.monotonic(), 0
        self.message(f"tuning {tasks} task(s), {total_trials} trials")

    def advance(self, trials_done: int, best_ms: float | None) -> None:
        now = time.monotonic()
        reached = trials_done >= self.total > self.shown
        if now - self.last < self.interval_s and not reached:
            return
        self.last, self.shown = now, trials_done
        best = f", best estimate {best_ms:.3f} ms" if best_ms is not None else ""
        self.message(f"trials {trials_done}/{self.total}{best}, {now - self.t0:.0f}s elapsed")

    def message(self, text: str) -> None:
        print(f"[tuner] {text}", file=self.stream, flush=True)

    def stop(self) -> None:
        pass


class RichProgress:
    """A progress bar: trials done / budget, best latency estimate, elapsed and ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress as Bar,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.bar = Bar(
            TextColumn("[bold]tuning"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[best]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = None

    def plan(self, tasks: int, from_db: int, from_other_teams: int, to_tune: int, warm: int,
             trials: int) -> None:
        self.message(plan_text(tasks, from_db, from_other_teams, to_tune, warm))

    def start(self, total_trials: int, tasks: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task("tuning", total=total_trials, best="")

    def advance(self, trials_done: int, best_ms: float | None) -> None:
        if self.task is not None:
            best = f"best ≈ {best_ms:.3f} ms" if best_ms is not None else ""
            self.bar.update(self.task, completed=trials_done, best=best)

    def message(self, text: str) -> None:
        self.console.print(f"[dim]{text}")

    def stop(self) -> None:
        if self.task is not None:
            self.bar.stop()


@derived_object
class ProgressCallback(PyMeasureCallback):
    """Counts measured trials and keeps the model latency estimate: the sum over tasks of
    weight x best kernel time (a task without a measurement yet counts with its measured default
    schedule, or, where that did not build or run, not at all)."""

    def __init__(self, weights: list[float], known_best_s: list[float | None],
                 on_update: Callable[[int, float | None], None]) -> None:
        super().__init__()
        self.weights = weights
        self.best_s = list(known_best_s)
        self.trials = 0
        self.per_task_trials = [0] * len(weights)
        self.on_update = on_update

    def apply(self, task_scheduler, task_id: int, measure_candidates, builder_results,  # noqa: ANN001
              runner_results) -> None:  # noqa: ANN001
        for res in runner_results:
            if res.error_msg is None and res.run_secs:
                secs = sum(float(x) for x in res.run_secs) / len(res.run_secs)
                if self.best_s[task_id] is None or secs < self.best_s[task_id]:
                    self.best_s[task_id] = secs
        self.trials += len(runner_results)
        self.per_task_trials[task_id] += len(runner_results)
        self.on_update(self.trials, self.estimate_ms())

    def estimate_ms(self) -> float | None:
        known = [w * b for w, b in zip(self.weights, self.best_s) if b is not None]
        return sum(known) * 1e3 if known else None
