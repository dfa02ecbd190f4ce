"""Small TIR workloads and records for database tests: real MetaSchedule objects, built in ms."""

from __future__ import annotations

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Schedule
from tvm.script import tirx as T
from tvm.target import Target

TARGET = {"kind": "llvm", "num-cores": 2}


def matmul(n: int, dtype: str = "float32"):  # noqa: ANN201 - an IRModule of one TVMScript PrimFunc
    """C = A @ B; with fp16 inputs it accumulates in fp32, as mixed precision does."""
    acc = "float32"

    @T.prim_func(s_tir=True)
    def func(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (n, n), dtype)
        B = T.match_buffer(b, (n, n), dtype)
        C = T.match_buffer(c, (n, n), acc)
        for i, j, k in T.grid(n, n, n):
            with T.sblock("C"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    C[vi, vj] = T.float32(0)
                C[vi, vj] = C[vi, vj] + T.Cast(acc, A[vi, vk]) * T.Cast(acc, B[vk, vj])

    return tvm.IRModule({"main": func})


def record(db, mod, run_secs, target=TARGET, searched: bool = True,  # noqa: ANN001
           variant: int = 1) -> ms.database.TuningRecord:
    """A record as the search makes them (with a sampling decision: `variant`, 0-7, tells
    schedules apart), or, `searched=False`, as a default schedule is stored (a fixed trace, no
    decisions)."""
    sch = Schedule(mod)
    i, _, _ = sch.get_loops(sch.get_sblock("C"))
    if searched:
        sch.sample_categorical(list(range(8)), [0.125] * 8, decision=variant)
    sch.parallel(i)
    workload = db.commit_workload(mod)
    return ms.database.TuningRecord(sch.trace, workload, run_secs, Target(target),
                                    ms.arg_info.ArgInfo.from_prim_func(mod["main"]))


def checked(db, *mods, target=TARGET):  # noqa: ANN001, ANN201 - a SQLDatabase, IRModules; CheckStats
    """Each workload's fastest records checked, as a run checks them before they are served
    (tuner/search/record_checks.py), with the kernel check run in this process."""
    from tuner.cluster.kernel_check import check_kernel
    from tuner.cluster.pool import Outcome
    from tuner.config import Settings
    from tuner.progress import SilentProgress
    from tuner.search.record_checks import check_records

    tasks = [ms.ExtractedTask(f"task{i}", mod, Target(target), [mod], 1) for i, mod in enumerate(mods)]
    return check_records(tasks, Target(target), db, lambda jobs: [Outcome(value=check_kernel(*job)) for job in jobs],
                         Settings(), SilentProgress())
