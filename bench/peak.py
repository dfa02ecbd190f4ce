"""This CPU's measured FP32 FMA peak: independent vector FMA chains on every core.

A TIR kernel compiled by TVM's LLVM for the target, so it uses the same ISA as the tuned
modules: `chains` accumulators of one vector register each (enough to cover the FMA latency on
both FMA pipes), one loop per thread. Peaks vary with clocks and VMs: measure, never assume.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tvm
from tvm.script import tirx as T
from tvm.target import Target

from tuner.cluster.threads import use_threads
from tuner.schedules.isa import vector_isa


def _kernel(threads: int, chains: int, lanes: int, steps: int) -> tvm.tirx.PrimFunc:
    @T.prim_func
    def fma(a: T.Buffer((lanes,), "float32"), b: T.Buffer((lanes,), "float32"),
            out: T.Buffer((threads, chains, lanes), "float32")) -> None:
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for t in T.parallel(threads):
            acc = T.alloc_buffer((chains, lanes), "float32", scope="local")
            for c in T.unroll(chains):
                for v in T.vectorized(lanes):
                    acc[c, v] = T.float32(c) * T.float32(0.001)
            for _s in range(steps):
                for c in T.unroll(chains):
                    for v in T.vectorized(lanes):
                        acc[c, v] = acc[c, v] * a[v] + b[v]
            for c in T.unroll(chains):
                for v in T.vectorized(lanes):
                    out[t, c, v] = acc[c, v]

    return fma


def fma_peak_timer(target: Target, threads: int, steps: int = 2_000_000) -> Callable[[], float]:
    """The FMA kernel built once; each call measures its GFLOP/s again (`threads` threads of
    independent FMA chains, 2 FLOP per lane per FMA). Kernel tables measure the peak again in
    every round: the VM's state moves the peak as much as the kernels."""
    isa = vector_isa(target)
    chains = max(8, isa.registers - 4)
    use_threads(threads)
    lib = tvm.compile(tvm.IRModule({"main": _kernel(threads, chains, isa.lanes, steps)}), target=target)
    dev = tvm.cpu()
    a = tvm.runtime.tensor(np.full(isa.lanes, 0.999, "float32"), dev)
    b = tvm.runtime.tensor(np.full(isa.lanes, 0.001, "float32"), dev)
    out = tvm.runtime.tensor(np.zeros((threads, chains, isa.lanes), "float32"), dev)
    rt = lib.mod if hasattr(lib, "mod") else lib
    timer = rt.time_evaluator(rt.entry_name, dev, number=1, repeat=5)
    flop = 2.0 * threads * chains * isa.lanes * steps
    return lambda: flop / timer(a, b, out).median / 1e9


def fma_peak_gflops(target: Target, threads: int, steps: int = 2_000_000) -> float:
    """GFLOP/s of `threads` threads of independent FMA chains, measured once."""
    return fma_peak_timer(target, threads, steps)()
