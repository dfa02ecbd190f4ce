"""How many threads TVM's runtime runs a parallel kernel on.

TVM's thread pool, left alone, takes half of `std::thread::hardware_concurrency()` on x86
("ignore hyper-threading"), whether or not the CPU has hyper-threads. On a VM whose vCPUs are
whole cores (this project's 2-core CI machine) every tuned module then ran on one core while
ONNX Runtime used both: a factor of 2 lost before any schedule mattered. Measurements, the
final timing and verification all run with the target's own core count instead.
"""

from __future__ import annotations

import os

_configured: int | None = None

# TVM's ThreadGroup::AffinityMode::kSpecifyThreadShareAllCore: every thread may run on every
# CPU listed. The default mode pins the calling (Python) thread to one core, and every thread it
# starts afterwards inherits that: ONNX Runtime's 2 threads, timed in the same process, then
# shared one core (1.9 ms instead of 0.84 on a 128x256x1024 MatMul here).
_SHARE_ALL_CORES = -3

# How many times TVM's idle pool workers yield before they sleep, when the environment does not
# say (TVM reads it once, when its pool starts). TVM's 300000 kept a core busy ~150 ms after
# every parallel call, and ONNX Runtime timed in that window (the report's alternation) ran
# its first ~10 squeezenet calls 3-4x slow on a 2-core EPYC. 10000 is ~5 ms: longer than any
# gap between the kernels of one inference, so a module's latency is unchanged (3.0-3.1 ms
# either way there).
_SPIN_COUNT = "10000"


def use_threads(threads: int) -> None:
    """Run TVM's parallel loops on `threads` threads in this process and its children.

    The environment variable covers a pool created later (and child processes); the runtime
    call resizes a pool that already exists. Cheap when nothing changes."""
    global _configured
    threads = max(1, int(threads))
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", _SPIN_COUNT)
    if _configured == threads:
        return
    import tvm

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    tvm.get_global_func("runtime.config_threadpool")(_SHARE_ALL_CORES, threads, [str(c) for c in cpus])
    _configured = threads


def current_threads() -> int:
    """The threads TVM's runtime uses now (after `use_threads`, its value)."""
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())
