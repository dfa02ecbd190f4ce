"""Which tuned records a CPU model runs better without.

A search ranks a task's candidates, and its default schedule, by their time alone: lone calls,
the kernel's weights flushed from the caches first (cluster/worker_tasks.py). Inside the model
a kernel reads what its neighbours left behind, and a record that won alone can lose there:
squeezenet tuned with 64 trials (2 per task; KVM Xeon, Sapphire Rapids class) served 8 records
that beat their defaults alone, and the module was 1.03-1.07x slower than its `--trials 0`
twin, by turns; the Winograd GEMM that weighed most ran 0.235 ms in the model against its
default's 0.170. So before a module is served, the kernels of the tasks that got a searched
record are timed inside two running models, one with the records and one with the default
schedules, and a record slower there than its default is withheld from this module (it stays
in the database: another model may place it better).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tvm import tirx
from tvm.ir import IRModule
from tvm.s_tir.meta_schedule import ExtractedTask
from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

from tuner.db.database import SQLDatabase

# SplitLayoutRewritePreproc renames a kernel whose weights it pre-packs.
_PREPACKED = "_prepacked"


@dataclass
class KernelChoice:
    """What the choice found, for the report."""

    candidates: int = 0  # tasks served a searched record, timed in the model against their default
    defaults_kept: list[str] = field(default_factory=list)  # tasks whose default ran faster in the model
    records_ms: float = 0.0  # the candidates' kernels in the model with their records
    defaults_ms: float = 0.0  # the same kernels with their default schedules
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "defaults_kept": self.defaults_kept,
                "records_ms": round(self.records_ms, 4), "defaults_ms": round(self.defaults_ms, 4),
                "seconds": round(self.seconds, 3)}


def searched_records(tasks: list[ExtractedTask], database: SQLDatabase, skip: set[int]) -> list[int]:
    """The tasks (outside `skip`) whose served record is one the search found, not a stored
    default schedule: the kernels where a record and a default can differ. (CPU: a searched
    trace may hold no sampling decision; only the mark tells a stored default.)"""
    out = []
    for i, task in enumerate(tasks):
        if i in skip:
            continue
        best = database.best(task.dispatched[0], traceless_defaults=False)
        if best is not None and not best.default:
            out.append(i)
    return out


def kernel_tasks(fused: IRModule, tasks: list[ExtractedTask], database: SQLDatabase) -> dict[str, int]:
    """The task of each kernel of the fused module, by the kernel's name in the module
    compiled from it (a task stands for every structurally equal kernel, under one name)."""
    by_workload = {wid: i for i, task in enumerate(tasks) for wid in database.workload_ids(task.dispatched[0])}
    out: dict[str, int] = {}
    for gv, func in fused.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        # As MetaScheduleApplyDatabase looks a kernel up.
        mod = _normalize_mod(func.with_attr("global_symbol", "main"))
        found = [by_workload[w] for w in database.workload_ids(mod) if w in by_workload]
        if found:
            out[gv.name_hint] = found[0]
    return out


def task_ms(times: dict[str, float], names: dict[str, int]) -> dict[int, float]:
    """Milliseconds per inference of each task's kernels, from per-symbol times."""
    out: dict[int, float] = {}
    for symbol, ms in times.items():
        task = names.get(symbol, names.get(symbol.removesuffix(_PREPACKED)))
        if task is not None:
            out[task] = out.get(task, 0.0) + ms
    return out


def slower_records(candidates: list[int], names: dict[str, int], with_records: dict[str, float],
                   with_defaults: dict[str, float]) -> tuple[list[int], float, float]:
    """The candidates whose kernels took longer in the model with their records than with
    their default schedules, and both models' time in the candidates' kernels. A candidate
    whose kernels were not seen in both models is left as it is."""
    records, defaults = task_ms(with_records, names), task_ms(with_defaults, names)
    slower, rec_total, def_total = [], 0.0, 0.0
    for i in candidates:
        if i not in records or i not in defaults:
            continue
        rec_total += records[i]
        def_total += defaults[i]
        if defaults[i] < records[i]:
            slower.append(i)
    return slower, rec_total, def_total
