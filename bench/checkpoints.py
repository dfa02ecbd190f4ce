"""Searches compared by what they had found along the way, re-timed side by side at the end.

A search's curve (the estimated latency after every batch: the sum over tasks of weight x the
best time measured so far) is made of measurements minutes apart, and two searches compared by
their curves were run one after the other: on a 2-core VM whose speed drifts by 16-20% from one
quarter hour to the next (session 42: ONNX Runtime timed resnet50 at 24.4-33.3 ms across one
afternoon), the drift between the two runs decided which curve was lower, and one configuration
run twice ended 5.5% apart. Here each run's database copy is kept; when both runs are done, the
record each task would have been served at every checkpoint (the fastest by the search's own
times among those stored by then, the default included; a run's n-th stored record is its n-th
trial) is built and timed again, every run's picks in one batch ordered by task, in rounds by
turns (`time_by_turns`), so that both runs' picks of a task are timed within seconds of each
other, and the curves are rebuilt from those times.
"""

from __future__ import annotations

import sqlite3
import statistics
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tuner.db.database import Candidate
from tuner.search.final_timing import time_by_turns
from tuner.search.job_database import open_database
from tuner.search.tuning import local_workers


def highest_record_id(db_file: Path) -> int:
    """The highest tuning record id in a SQLite database (0 when it holds none)."""
    with closing(sqlite3.connect(db_file)) as conn:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM tuning_records").fetchone()[0])


@dataclass
class RunRecords:
    """One search's database copy, and the highest record id it held before the search."""

    db_file: Path
    base_id: int

    def stored_ids(self) -> list[int]:
        """The ids of the records the search stored, in order: one per trial (MetaSchedule
        stores every measured candidate, a failed one too), so the trials done are the records
        stored. (The progress a search reports lags its records by up to a round of tasks: a
        resnet50 run reported 28 trials while it held 265 new records.)"""
        with closing(sqlite3.connect(self.db_file)) as conn:
            return [int(row[0]) for row in conn.execute("SELECT id FROM tuning_records WHERE id > ? ORDER BY id",
                                                        (self.base_id,))]


def _pick(history: list[Candidate], mark: int) -> Candidate | None:
    """What compilation would have served by then, by the search's times."""
    stored = [c for c in history if c.record_id <= mark]
    return min(stored, key=lambda c: (c.mean_run_secs, c.record_id)) if stored else None


def retime(tasks: list[ms.ExtractedTask], target: dict[str, Any], settings: Any, runs: dict[str, RunRecords],
           budget: int, points: int, rounds: int) -> dict[str, Any]:
    """Each run's curve at `points` + 1 evenly spaced checkpoints (0 to `budget` trials) from its
    picks re-timed side by side: `curves[label]` is [(trials, ms)], the sum over tasks of weight
    x the median of the pick's rounds. A task whose pick at some checkpoint did not build or run
    is left out of every curve (`tasks_left_out`), so the curves still sum the same tasks."""
    checkpoints = [round(budget * k / points) for k in range(points + 1)]
    picks: dict[str, list[list[Candidate | None]]] = {}  # label -> task -> checkpoint -> pick
    stored_by_run: dict[str, int] = {}
    for label, run in runs.items():
        db = open_database(f"sqlite:///{run.db_file}", target)
        stored = run.stored_ids()
        stored_by_run[label] = len(stored)

        def mark(trials: int) -> int:
            return stored[min(trials, len(stored)) - 1] if trials > 0 and stored else run.base_id

        # The last checkpoint takes every record: the last round may overshoot the budget.
        marks = [mark(t) for t in checkpoints[:-1]] + [mark(len(stored))]
        picks[label] = []
        for task in tasks:
            history = db.measured_history(task.dispatched[0])
            picks[label].append([_pick(history, m) for m in marks])
    # One entry per distinct schedule of a task: the shared start's records are in every copy,
    # and a run may store a schedule again (a default re-measured, a mutation found twice).
    keys: dict[tuple[int, str], int] = {}
    records: list[Any] = []
    for i in range(len(tasks)):  # by task: both runs' picks of a task are timed one after the other
        for label in runs:
            for pick in picks[label][i]:
                if pick is not None and (i, pick.trace_json) not in keys:
                    keys[(i, pick.trace_json)] = len(records)
                    records.append(pick.record)
    workers = local_workers(settings, int(target["num-cores"]))
    try:
        timed, _ = time_by_turns(records, Target(dict(target)), workers, rounds)
    finally:
        workers.close()

    def seconds(i: int, pick: Candidate | None) -> float | None:
        found = timed[keys[(i, pick.trace_json)]] if pick is not None else None
        return statistics.median(found) if found else None

    left_out = {i for label in runs for i, row in enumerate(picks[label]) if any(seconds(i, p) is None for p in row)}
    kept = [i for i in range(len(tasks)) if i not in left_out]
    # Per task (weight x ms at each checkpoint): which tasks a model-steered search gains or loses on.
    task_curves = {label: {tasks[i].task_name: [1e3 * tasks[i].weight * seconds(i, pick) for pick in picks[label][i]]
                           for i in kept} for label in runs}
    curves = {label: [(t, sum(task_curves[label][tasks[i].task_name][k] for i in kept))
                      for k, t in enumerate(checkpoints)] for label in runs}
    return {"points": points, "rounds": rounds, "records_stored": stored_by_run, "records_timed": len(records),
            "records_failed": sum(t is None for t in timed), "tasks": len(tasks),
            "tasks_left_out": [tasks[i].task_name for i in sorted(left_out)], "curves": curves,
            "task_weights": {task.task_name: task.weight for task in tasks}, "task_curves": task_curves}
