"""The final timing step: a task's served record is picked by timing its best few records again,
side by side, when its search ends; not by the times the search measured.

The search measures each candidate once, in its own runner call, minutes apart from the others
(the default at the start, a winner up to 20 minutes later), and serves the fastest of some
hundred such measurements. On a VM the same ~50 us kernel measured up to 1.5x apart from one
runner call to the next (squeezenet's Winograd GEMMs, AMD EPYC znver5, 2026-12-05: the best
record, stored at 0.045 ms, re-timed 0.060-0.090; its default 0.049-0.136), so the fastest
measurement is the luckiest more often than the best schedule. (Measured gain: squeezenet's
module 0.986x the search's pick, 10 of 11 rounds by turns below 1, znver4; README, session 31.)
Here the task's `final_top` fastest searched records, its default and the records an earlier final timing ranked are each timed in
`final_rounds` runner calls, by turns (every round times every candidate once, in a rotated
order), and the median of a record's rounds ranks it (`models.serving_order`).
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tuner.db.database import SQLDatabase

from ..config import Settings
from ..interrupts import requested as interrupt_requested
from ..progress import Progress
from .record_checks import scheduled_module

if TYPE_CHECKING:
    from .tuning import Workers


@dataclass
class FinalTiming:
    """What the final timing of one run did; the report's ``final_timing``."""

    tasks: int = 0  # tasks with two or more candidates, timed
    candidates: int = 0
    rounds: int = 0
    # Tasks whose best record by the final timing is not the search's fastest one, and of those
    # the ones it gave back to the default schedule.
    changed: int = 0
    to_default: int = 0
    failed: int = 0  # candidates that did not build or run in every round (left unranked)
    measurements: int = 0  # runner calls made (they count in the cluster's trials per node, not as trials)
    seconds: float = 0.0
    per_task: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: FinalTiming) -> FinalTiming:
        return FinalTiming(self.tasks + other.tasks, self.candidates + other.candidates,
                           max(self.rounds, other.rounds), self.changed + other.changed,
                           self.to_default + other.to_default, self.failed + other.failed,
                           self.measurements + other.measurements, self.seconds + other.seconds,
                           [*self.per_task, *other.per_task])

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinalTiming:
        return cls(**data)


@dataclass
class _Entry:
    index: int
    artifact: str
    args_info: Any
    rounds: list[float] = field(default_factory=list)
    failed: bool = False


def time_by_turns(records: Sequence[ms.database.TuningRecord], target: Target, workers: Workers,
                  rounds: int) -> tuple[list[list[float] | None], int]:
    """Each record's schedule built once and timed in `rounds` runner calls, by turns: every round
    times every record once, in a rotated order, so that the machine's drift over the minutes
    this takes falls on all of them alike instead of on whichever was timed last.

    Returns each record's mean time per round (None: it did not build, or did not run in every
    round) and the runner calls made. Stops early, with what it has, when an interrupt is asked for."""
    built = workers.builder.build([ms.builder.BuilderInput(scheduled_module(r), target) for r in records])
    entries = [_Entry(k, str(b.artifact_path), r.args_info)
               for k, (r, b) in enumerate(zip(records, built)) if b.error_msg is None]
    device_type = "cuda" if target.kind.name == "cuda" else "cpu"
    measurements = 0
    workers.allow_runs([e.artifact for e in entries], rounds)
    try:
        for n in range(rounds):
            if interrupt_requested():
                break
            # Rotated: no record is always the first after a build or always the last.
            order = entries[n % len(entries):] + entries[:n % len(entries)] if entries else []
            live = [e for e in order if not e.failed]
            futures = workers.runner.run([ms.runner.RunnerInput(e.artifact, device_type, e.args_info) for e in live])
            measurements += len(live)
            for e, future in zip(live, futures):
                result = future.result()
                if result.error_msg is not None or not result.run_secs:
                    e.failed = True
                    continue
                secs = [float(x) for x in result.run_secs]
                e.rounds.append(sum(secs) / len(secs))
    finally:
        workers.allow_runs([e.artifact for e in entries], 0)
        for e in entries:
            shutil.rmtree(os.path.dirname(e.artifact), ignore_errors=True)
    out: list[list[float] | None] = [None] * len(records)
    for e in entries:
        if not e.failed and len(e.rounds) == rounds:
            out[e.index] = e.rounds
    return out, measurements


def time_finalists(tasks: list[ms.ExtractedTask], target: Target, database: SQLDatabase, workers: Workers,
                   settings: Settings, progress: Progress) -> FinalTiming:
    """Time each task's best records again by turns and store the times they rank by.

    With `search.final_top` 0 the tasks' earlier final times are dropped instead, so that they
    are served by the search's times, as before this step existed."""
    t0 = time.perf_counter()
    stats = _time_finalists(tasks, target, database, workers, settings, progress)
    stats.seconds = time.perf_counter() - t0
    return stats


def _time_finalists(tasks: list[ms.ExtractedTask], target: Target, database: SQLDatabase, workers: Workers,
                    settings: Settings, progress: Progress) -> FinalTiming:
    top, rounds = settings.search.final_top, settings.search.final_rounds
    stats = FinalTiming(rounds=rounds)
    mods = [task.dispatched[0] for task in tasks]
    if top == 0:
        for mod in mods:
            database.record_final_times(mod, {})
        return stats
    found = [(i, database.final_candidates(mod, top)) for i, mod in enumerate(mods)]
    # A task with one candidate has nothing to compare it with: it is served that one anyway.
    found = [(i, cands) for i, cands in found if len(cands) > 1]
    if not found:
        return stats
    flat = [(i, c) for i, cands in found for c in cands]
    progress.message(f"final timing: {len(flat)} record(s) of {len(found)} task(s), {rounds} round(s) by turns")
    timed_rounds, stats.measurements = time_by_turns([c.record for _, c in flat], target, workers, rounds)
    if interrupt_requested():
        return stats
    stats.failed += sum(r is None for r in timed_rounds)
    for i, cands in found:
        timed = {c.record_id: statistics.median(r) for (j, c), r in zip(flat, timed_rounds) if j == i and r}
        database.record_final_times(mods[i], timed)
        if not timed:
            continue
        stats.tasks += 1
        stats.candidates += len(timed)
        searched_best = min(cands, key=lambda c: (c.mean_run_secs, c.record_id))
        final_best = min((c for c in cands if c.record_id in timed), key=lambda c: (timed[c.record_id], c.record_id))
        changed = final_best.record_id != searched_best.record_id
        stats.changed += changed
        stats.to_default += changed and final_best.default
        stats.per_task.append({
            "task": tasks[i].task_name, "candidates": len(timed),
            "search_best_ms": round(searched_best.mean_run_secs * 1e3, 6),
            "search_best_final_ms": round(timed[searched_best.record_id] * 1e3, 6)
            if searched_best.record_id in timed else None,
            "final_best_ms": round(timed[final_best.record_id] * 1e3, 6),
            "picked": "default" if final_best.default else ("search's fastest" if not changed else "another searched"),
        })
    return stats
