"""Code that runs inside build and measurement workers.

Kept free of MetaSchedule imports: a worker needs only ``import tvm`` (about 1 s), never
``tvm.s_tir.tensor_intrin`` (10-50 s), so a restarted worker is cheap.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any


def warm_up() -> int:
    """Pool initializer: pay the TVM import once per worker process."""
    import tvm  # noqa: F401

    return os.getpid()


def build_candidate(mod_json: str, target: dict[str, Any], out_dir: str) -> str:
    """Compile one scheduled TIR module and link it to a shared library the runner can dlopen."""
    import tvm
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    from tvm.target import Target

    from tuner.schedules.lowering import lowering_config

    mod = tvm.ir.load_json(mod_json)
    # Measure without the weight layout rewrite: at run time the weights are pre-packed once.
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    with tvm.transform.PassContext(config=lowering_config(mod_json)):
        lib = tvm_build(mod, target=Target(target))
    # One folder per candidate: MetaSchedule's RemoveBuildArtifact deletes the artifact's folder.
    folder = os.path.join(out_dir, uuid.uuid4().hex)
    os.makedirs(folder)
    path = os.path.join(folder, "candidate.so")
    lib.export_library(path)
    return path


# CPU candidates are timed one call at a time, each after the kernel's weights were flushed from
# the caches (`_flush_weights`: every argument but the first, the activations the kernel before
# it has just written, and the last, its output). Timed back to back (number x min_repeat_ms, as
# MetaSchedule's runner times them, and as tuner did before 2026-12-05: its one flush per repeat
# preceded some hundred calls), a kernel's weights stay in L2 between calls, while inside a model
# each kernel reads them after its neighbours evicted them. The search then ranked candidates by
# a time the model never sees: squeezenet's Winograd GEMMs tuned at 16 trials per task (AVX2
# code, AMD EPYC znver4) ran 0.14-0.22 ms back to back and 0.26-0.42 in the module, where the
# default schedules they had beaten took 0.20-0.34. Tuned so instead (same seeds and budget),
# modules timed by turns were faster in 4 of 5 searches (resnet50 0.935x, squeezenet 0.965x and
# 0.991x, the transformer 0.954x in one and 1.094x in the other: its 6 MB of weights may stay in
# L3 inside the model); flushing the output too (all arguments but the first) was no better than
# back to back (bench/results/cpu-timing-ab-*.json). Records timed so are keyed apart
# (Fingerprint.timing).
CPU_TIMING = "weights-flushed"

# GPU candidates are timed one launch at a time, each after the L2 cache was overwritten. With
# back-to-back launches (as MetaSchedule's runner times them) a kernel's weights stay in the
# 50-60 MB L2 between runs, while inside a model every kernel reads its weights from HBM: on an
# H200, resnet50 fp16's tuned convolutions ran up to 2x slower in the module than their records
# said (3x3 on 14x14x256: 30 us record, 49 us in the model; records 799 us against 1026 us in the
# module for all kernels, bench/gpu_kernels.py), and the search ranked candidates by a time the
# model never sees. Records timed so are keyed apart (GpuFingerprint.timing).
GPU_TIMING = "l2-flushed"
GPU_FLUSH_BYTES = 256 << 20
GPU_TIMED_LAUNCHES = 10


def gpu_times(lib: Any, dev: Any, args: list[Any]) -> list[float]:
    """Seconds per launch with a cold L2, each less the launch gap.

    TVM's evaluator syncs the device before it starts the timer, so a lone launch also counts
    the 5-10 us the launch takes to reach an idle GPU, which inside a CUDA graph the kernels do
    not wait (H200, cold lone launches: 17 us for a kernel that runs 8.6 us in the module). The
    gap is a lone warm launch less a warm launch among back-to-back ones."""
    def timed(**kw: Any) -> list[float]:
        return [float(x) for x in lib.time_evaluator(lib.entry_name, dev, **kw)(*args).results]

    cold = timed(number=1, repeat=GPU_TIMED_LAUNCHES, min_repeat_ms=0, cache_flush_bytes=GPU_FLUSH_BYTES)
    lone = sorted(timed(number=1, repeat=GPU_TIMED_LAUNCHES, min_repeat_ms=0))[GPU_TIMED_LAUNCHES // 2]
    (packed,) = timed(number=20, repeat=1, min_repeat_ms=10)
    return launch_gap_removed(cold, lone, packed)


def launch_gap_removed(cold: list[float], lone: float, packed: float) -> list[float]:
    """`cold` times less the launch gap (`lone` - `packed`), never below the warm `packed` time."""
    gap = max(0.0, lone - packed)
    return [max(t - gap, packed) for t in cold]


def measure_candidate(
    artifact_path: str,
    device_type: str,
    args_info_json: list[Any],
    cpu_calls: int,
    threads: int = 0,
) -> list[float]:
    """Time one built candidate on random inputs: seconds per timed call (CPU: `cpu_calls`
    calls, each after its weights were flushed, `cpu_times`; CUDA: launches after an L2 flush,
    `gpu_times`).

    `threads`: TVM runtime threads for a CPU candidate (the target's cores; 0 = TVM's own
    default, which on x86 is half the logical CPUs even without hyper-threads)."""
    import numpy as np
    import tvm

    from .threads import use_threads

    if threads and device_type == "cpu":
        use_threads(threads)

    dev = tvm.runtime.device(device_type, 0)
    lib = tvm.runtime.load_module(artifact_path)
    rng = np.random.default_rng(0)
    args = []
    for kind, dtype, shape in args_info_json:
        if kind != "TENSOR":
            raise ValueError(f"unsupported argument kind {kind!r}")
        if "int" in dtype or dtype == "bool":
            host = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            host = rng.uniform(-1, 1, size=shape).astype(dtype)
        args.append(tvm.runtime.tensor(host, dev))
    dev.sync()
    if device_type == "cuda":
        return gpu_times(lib, dev, args)
    return cpu_times(lib, dev, args, cpu_calls)


def cpu_times(lib: Any, dev: Any, args: list[Any], calls: int) -> list[float]:
    """Seconds of `calls` lone calls, each after its weights were flushed from the caches; the
    middle half of them, so that a stall of the VM in one call does not move the mean
    MetaSchedule ranks by."""
    import tvm

    tvm.register_global_func(FLUSH_WEIGHTS, _flush_weights, override=True)
    evaluator = lib.time_evaluator(lib.entry_name, dev, number=1, repeat=calls, min_repeat_ms=0,
                                   f_preproc=FLUSH_WEIGHTS)
    return middle_half([float(x) for x in evaluator(*args).results])


FLUSH_WEIGHTS = "tuner.flush_weights"


def _flush_weights(*args: Any) -> None:
    """A kernel's arguments between the first (the activations the kernel before it has just
    written) and the last (its output, written where a freed tensor was) out of the caches:
    TVM's flush skips its first argument, so the first is passed for it to skip."""
    import tvm

    if len(args) > 2:
        tvm.get_global_func("cache_flush_cpu_non_first_arg")(*args[:-1])


def middle_half(times: list[float]) -> list[float]:
    """The sorted times without their fastest and slowest quarter (all of them below 4)."""
    ordered = sorted(times)
    cut = len(ordered) // 4
    return ordered[cut:len(ordered) - cut]


def dumps_target(target: Any) -> dict[str, Any]:
    """A TVM Target as a plain dict that pickles and rebuilds the same target."""
    return json.loads(str(target))  # a Target prints as its JSON dict
