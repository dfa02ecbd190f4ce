"""The check step: a record is served only after its kernel computed what its workload says.

MetaSchedule ranks candidates by time alone; one that TVM lowered to wrong code (a tensor-core
fp16 kernel did on an H200) became its task's best and broke the model for everyone the shared
database serves. So every task's fastest record is checked (cluster/kernel_check.py: built from
its trace, run on random inputs beside the workload's unscheduled kernel) before it can be
served: after a search, for the record about to become the task's best; on first use, for a
record that arrived unchecked (a JSON import, an older tuner, another TVM version). A wrong
record is kept, marked with what was wrong, and never served; the task's next record is checked
in its place, up to `checks.max_per_task`, then the task falls back to its default schedule.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Schedule
from tvm.target import Target

from tuner.cluster.pool import Outcome
from tuner.db.database import CHECK_FAILED, CHECK_OK, CHECK_WRONG, SQLDatabase, Unchecked

from ..config import Settings
from ..progress import Progress
from ..stages import summary

# Runs check jobs (kernel_check.check_kernel's arguments) where the hardware is.
CheckFn = Callable[[list[tuple[Any, ...]]], list[Outcome]]


@dataclass
class CheckStats:
    """What the checks of one run found; the report's ``record_checks``."""

    checked: int = 0
    passed: int = 0
    wrong: int = 0
    failed: int = 0
    seconds: float = 0.0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: CheckStats) -> CheckStats:
        return CheckStats(self.checked + other.checked, self.passed + other.passed, self.wrong + other.wrong,
                          self.failed + other.failed, self.seconds + other.seconds,
                          [*self.rejected, *other.rejected])

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "passed": self.passed, "rejected_wrong_output": self.wrong,
                "rejected_check_failed": self.failed, "seconds": round(self.seconds, 3),
                "rejected": self.rejected}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckStats:
        return cls(data["checked"], data["passed"], data["rejected_wrong_output"], data["rejected_check_failed"],
                   data["seconds"], list(data["rejected"]))


def tolerances(settings: Settings) -> dict[str, tuple[float, float]]:
    """(atol, rtol) per output dtype: the model verification's, by precision."""
    v = settings.verify
    fp32, fp16 = (v.fp32_atol, v.fp32_rtol), (v.fp16_atol, v.fp16_rtol)
    return {"float32": fp32, "float64": fp32, "float16": fp16, "bfloat16": fp16}


def scheduled_module(record: ms.database.TuningRecord) -> tvm.IRModule:
    """The record's trace replayed on its workload, as compilation applies it (postprocessing
    included, so a packed-weight kernel still holds the block that packs its weights)."""
    sch = Schedule(record.workload.mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod


def _job(unchecked: Unchecked, target: dict[str, Any], settings: Settings) -> tuple[Any, ...]:
    workload = unchecked.record.workload.mod
    return (tvm.ir.save_json(scheduled_module(unchecked.record)), tvm.ir.save_json(workload), target,
            tolerances(settings), settings.checks.seed)


def check_records(tasks: list[ms.ExtractedTask], target: Target, database: SQLDatabase, check: CheckFn,
                  settings: Settings, progress: Progress) -> CheckStats:
    """Check each task's fastest unchecked record until its fastest usable one passed.

    Tasks are checked side by side (one round checks one record of every task that needs one),
    so a run pays about one check time per round, not per task, where there are workers."""
    stats = CheckStats()
    t0 = time.perf_counter()
    target_dict = json.loads(str(target))
    pending = list(range(len(tasks)))
    for _ in range(settings.checks.max_per_task):
        found = [(i, database.fastest_unchecked(tasks[i].dispatched[0])) for i in pending]
        found = [(i, u) for i, u in found if u is not None]
        if not found:
            break
        if stats.checked == 0:
            progress.message(f"checking the output of {len(found)} task(s)' fastest record(s)")
        # Only a task whose record was just rejected has a next one to check.
        pending = []
        jobs, ready = [], []
        for i, unchecked in found:
            try:
                jobs.append(_job(unchecked, target_dict, settings))
                ready.append((i, unchecked))
            except Exception as exc:  # noqa: BLE001 - a trace that no longer applies is unusable
                _store(database, stats, tasks[i], unchecked, CHECK_FAILED,
                       f"its trace does not apply to the workload: {summary(exc)}")
                pending.append(i)
        for (i, unchecked), outcome in zip(ready, check(jobs)):
            if outcome.error is not None:
                status, detail = CHECK_FAILED, f"the check could not run it: {outcome.error}"
            else:
                correct, detail = outcome.value
                status = CHECK_OK if correct else CHECK_WRONG
            _store(database, stats, tasks[i], unchecked, status, detail)
            if status != CHECK_OK:
                pending.append(i)
    stats.seconds = time.perf_counter() - t0
    for bad in stats.rejected:
        progress.message(f"{bad['task']}: record {bad['record_id']} rejected, never served: {bad['reason']}")
    return stats


def _store(database: SQLDatabase, stats: CheckStats, task: ms.ExtractedTask, unchecked: Unchecked,
           status: str, detail: str) -> None:
    database.record_checked(unchecked.record_id, status, detail)
    stats.checked += 1
    if status == CHECK_OK:
        stats.passed += 1
        return
    if status == CHECK_WRONG:
        stats.wrong += 1
    else:
        stats.failed += 1
    stats.rejected.append({"task": task.task_name, "record_id": unchecked.record_id,
                           "mean_run_ms": round(unchecked.mean_run_secs * 1e3, 6), "reason": detail})
