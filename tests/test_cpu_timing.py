"""CPU candidates are timed as a model runs them: one call at a time, its weights out of the caches."""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import te

from tuner import hardware
from tuner.cluster import worker_tasks


def _scale_kernel(n: int) -> tuple[object, list[object]]:
    a = te.placeholder((n,), "float32", name="a")
    w = te.placeholder((n,), "float32", name="w")
    b = te.compute((n,), lambda i: a[i] * w[i], name="b")
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, w, b])}), target="llvm")
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ones(n, "float32"), dev), tvm.runtime.tensor(np.full(n, 2, "float32"), dev),
            tvm.runtime.empty((n,), "float32", dev)]
    return (lib.mod if hasattr(lib, "mod") else lib), args


def test_cpu_candidates_are_timed_call_by_call_and_a_stall_does_not_count(monkeypatch) -> None:  # noqa: ANN001
    flushed: list[int] = []
    real = worker_tasks._flush_weights

    def flush(*kernel_args: object) -> None:
        flushed.append(len(kernel_args))
        real(*kernel_args)

    monkeypatch.setattr(worker_tasks, "_flush_weights", flush)
    rt, args = _scale_kernel(1 << 16)
    times = worker_tasks.cpu_times(rt, tvm.cpu(), args, calls=10)
    assert len(times) == 6 and min(times) > 0 and times == sorted(times)  # 10 calls less 2 + 2
    assert flushed == [3] * 10  # before every timed call, given all of the kernel's arguments
    np.testing.assert_array_equal(args[2].numpy(), np.full(1 << 16, 2, "float32"))
    # One call in eight stalled by the VM (100 us against 1-7): the mean MetaSchedule ranks by
    # never sees it, nor the fastest quarter.
    assert worker_tasks.middle_half([5, 1, 100, 2, 3, 4, 6, 7]) == [3, 4, 5, 6]
    assert worker_tasks.middle_half([2.0, 1.0, 3.0]) == [1.0, 2.0, 3.0]


def test_cpu_records_timed_back_to_back_keep_their_own_key() -> None:
    cpu = hardware.fingerprint_for({"kind": "llvm", "num-cores": 2})
    warm = dataclasses.replace(cpu, timing="")  # as records were keyed before 2026-12-05
    assert cpu.timing == "weights-flushed" and warm.key != cpu.key
    assert warm.family == cpu.family  # still a warm start and cost-model data for the family
