"""Run and time the compiled module and ONNX Runtime in this process, and compare outputs."""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import tvm
from tvm import relax

from ..errors import VerificationError


def _flatten(value: Any) -> list[np.ndarray]:
    """The VM returns a Tensor, or a (nested) tuple of them for several outputs."""
    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    if hasattr(value, "__len__"):
        return [arr for item in value for arr in _flatten(item)]
    return [np.asarray(value)]


def device_for(target_kind: str) -> tvm.runtime.Device:
    """Where a module compiled for this target kind runs: the CPU, or the first GPU CUDA numbers."""
    return tvm.cuda(0) if target_kind == "cuda" else tvm.cpu()


class TVMModel:
    """A loaded `model.so` ready to run on its device, inputs already there."""

    def __init__(self, library: Path | Any, input_names: list[str], device: tvm.runtime.Device | None = None) -> None:
        lib = tvm.runtime.load_module(str(library)) if isinstance(library, (str, Path)) else library
        self.device = device or tvm.cpu()
        self.vm = relax.VirtualMachine(lib, self.device)
        self.input_names = input_names

    def prepare(self, inputs: dict[str, np.ndarray]) -> list[tvm.runtime.Tensor]:
        return [tvm.runtime.tensor(inputs[n], self.device) for n in self.input_names]

    def call(self, args: list[tvm.runtime.Tensor]) -> Any:
        """One inference, finished: GPU kernels run asynchronously, so timing must wait for them
        here (and not pay for copying the outputs back, which `run` does)."""
        out = self.vm["main"](*args)
        self.device.sync()
        return out

    def run(self, args: list[tvm.runtime.Tensor]) -> list[np.ndarray]:
        return _flatten(self.call(args))


class ORTModel:
    """ONNX Runtime on the CPU, the reference and the latency bar.

    `threads`: its intra-op threads, the same as the TVM module's, so the two are timed on
    the same cores (0 = ORT's default, one per physical core). A count equal to that default is
    left to ORT: asked for explicitly, ORT does not pin its threads, and in a process where TVM
    ran it was 2x slower here (1.6-1.9 ms vs 0.6-0.8 on a 128x256x1024 MatMul, 2 cores).

    ORT's own defaults otherwise, spinning idle threads included: that is the ORT a user
    deploys. With spinning off (as the report timed it until 2026-12-03, to keep ORT's spinning
    threads away from TVM's timing) ORT was 15-20% slower on the transformer and squeezenet and
    its time swung when interleaved with TVM's (squeezenet 4.9-7.5 ms vs 4.0-4.5 spinning, 2-core
    EPYC). Its spin outlasting its calls (40-60 ms) is dealt with by `interleaved_medians_ms`."""

    def __init__(self, proto: onnx.ModelProto, threads: int = 0) -> None:
        import onnxruntime as ort
        import psutil

        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # its errors come back as exceptions, which the run reports
        if threads and threads != psutil.cpu_count(logical=False):
            opts.intra_op_num_threads = threads
        self.threads = threads or psutil.cpu_count(logical=False) or 1
        self.proto = proto
        self.session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def another(self) -> ORTModel:
        """A second session of the same model and options (its own threads and memory)."""
        return ORTModel(self.proto, self.threads)

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(x) for x in self.session.run(None, inputs)]


def wait_for_quiet_cpu(max_seconds: float, busy_percent: float, sample_s: float = 0.5) -> float | None:
    """Wait until the machine's CPUs are less than `busy_percent` busy (this process idles
    meanwhile, so the figure is everyone else's), at most `max_seconds`; returns the last
    reading (None when `max_seconds` is 0: no wait, no reading). A module timed on a 2-core
    machine beside a test run or another job took up to 1.8x as long as the same module timed
    on a quiet one."""
    import psutil

    if max_seconds <= 0:
        return None
    deadline = time.monotonic() + max_seconds
    busy = psutil.cpu_percent(interval=sample_s)
    while busy >= busy_percent and time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=sample_s)
    return busy


def median_ms(fn: Callable[[], Any], max_runs: int, min_seconds: float) -> float:
    """Median wall time of `fn` after one warm-up; enough runs to cover `min_seconds`, at least 3."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    runs = max(3, min(max_runs, math.ceil(min_seconds / max(first, 1e-6))))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def interleaved_medians_ms(fns: list[Callable[[], Any]], max_runs: int, min_seconds: float,
                           block_seconds: float = 0.25, settle_s: float = 0.05) -> list[float]:
    """Median wall time of each of `fns`, timed in alternating blocks (the longest about
    `block_seconds`; after one warm-up each), each engine's `max_runs` runs, or `min_seconds`
    of them, spread evenly over the same rounds.

    The report's ratios compare engines, so they are timed side by side: on the 2-core VMs
    here the same module's latency drifted by up to 1.8x between stretches of a few seconds
    (resnet50 tuned 46.6, 79.4, 47.4 ms in three consecutive runs, ONNX Runtime timed after it
    each time 49.0, 43.9, 48.7), and timed one after the other the drift landed on one side.

    An engine's idle threads keep a core busy after its block: TVM's pool worker yields in a
    loop for ~150 ms (ONNX Runtime's first ~10 squeezenet calls after it took 11-15 ms instead
    of 3.7), ONNX Runtime's spin for 40-60 ms (the TVM module's first 3 calls after it 2x slow).
    So each block starts with `settle_s` of untimed calls of its own engine (none for an engine
    whose one call outlasts that), and every round takes the engines in a new (seeded) random
    order, so no engine always follows the same one: in a fixed order, with ONNX Runtime
    spinning, the module timed right after it read its whole block 1.1-1.8x slow in 3 rounds
    of 16 while its twins timed next read as before (squeezenet, three VMs of one module, 2-core
    EPYC znver4; with ORT's spinning off, 24 of 24 rounds alike). Shuffled, such blocks are a
    minority of every engine's blocks, and its median passes over them."""
    firsts = []
    for fn in fns:
        start = time.perf_counter()
        fn()
        firsts.append(max(time.perf_counter() - start, 1e-6))
    wanted = [max(3, min(max_runs, math.ceil(min_seconds / f))) for f in firsts]
    # As many rounds as the engine that needs the most blocks; each engine's runs spread evenly
    # over all of them, so every engine is timed across the whole span.
    rounds = max(math.ceil(w / max(1, int(block_seconds / f))) for w, f in zip(wanted, firsts))
    times: list[list[float]] = [[] for _ in fns]
    order, shuffle = list(range(len(fns))), random.Random(0).shuffle
    for r in range(rounds):
        shuffle(order)
        for i in order:
            fn, t = fns[i], times[i]
            if firsts[i] < settle_s:
                settled = time.perf_counter() + settle_s
                while time.perf_counter() < settled:
                    fn()
            for _ in range(wanted[i] * (r + 1) // rounds - len(t)):
                start = time.perf_counter()
                fn()
                t.append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def kernels_in_model_ms(models: list[TVMModel], args: list[list[tvm.runtime.Tensor]], min_seconds: float,
                        min_rounds: int = 10, max_rounds: int = 200,
                        between: Callable[[], None] = lambda: None) -> list[dict[str, float]]:
    """Per model, each called symbol's milliseconds per inference (kernels, and VM builtins
    such as allocations), summed over its calls: the median over instrumented inferences of
    all `models` taken by turns (a new seeded order each round), so that the machine's drift
    lands on every model alike.

    Timed inside the running model, a kernel reads what its neighbours left in the caches:
    squeezenet's Winograd GEMM records that beat their default schedules measured alone, their
    weights flushed (0.354 against 0.401 ms), ran slower than those defaults in the model
    (0.235 against 0.170). The instrument calls back into Python around each call, not
    inside the timed span. `between` runs before each instrumented inference (a benchmark's
    uninstrumented wall timing, so both see the same stretch of the machine)."""
    started: dict[str, float] = {}
    per: dict[str, float] = {}

    def instrument(_func: Any, symbol: str, before: bool, _ret: Any, *_args: Any) -> int:
        if before:
            started[symbol] = time.perf_counter()
        else:
            per[symbol] = per.get(symbol, 0.0) + (time.perf_counter() - started.pop(symbol)) * 1e3
        return 0

    firsts = []
    for model, a in zip(models, args):
        model.vm.set_instrument(instrument)
        start = time.perf_counter()
        model.call(a)  # warm-up, and how long one instrumented inference takes
        firsts.append(max(time.perf_counter() - start, 1e-6))
    rounds = max(min_rounds, min(max_rounds, math.ceil(min_seconds / max(firsts))))
    runs: list[list[dict[str, float]]] = [[] for _ in models]
    order, shuffle = list(range(len(models))), random.Random(0).shuffle
    try:
        for _ in range(rounds):
            shuffle(order)
            for i in order:
                between()
                per.clear()
                models[i].call(args[i])
                runs[i].append(dict(per))
    finally:
        for model in models:
            model.vm.set_instrument(None)
    out = []
    for timed in runs:
        names = set().union(*timed)
        out.append({n: float(np.median([r.get(n, 0.0) for r in timed])) for n in names})
    return out


@dataclass
class Comparison:
    max_abs_error: float
    verified: bool


def compare(outputs: list[np.ndarray], reference: list[np.ndarray], names: list[str],
            atol: float, rtol: float, overflow_hint: str = "", reference_name: str = "onnxruntime") -> Comparison:
    """Every output within atol + rtol*|ref|; raises VerificationError naming the first that is not.
    An output with NaN or Inf where ONNX Runtime's is finite is named as such (`overflow_hint`
    says what usually causes it, e.g. fp16's range), not as an error of "nan"."""
    ref_name = "ONNX Runtime" if reference_name == "onnxruntime" else reference_name
    if len(outputs) != len(reference):
        raise VerificationError(f"the compiled module returned {len(outputs)} outputs, {ref_name} {len(reference)}")
    worst = 0.0
    for name, out, ref in zip(names, outputs, reference):
        if out.shape != ref.shape:
            raise VerificationError(f"output {name!r} has shape {out.shape}, {ref_name} gives {ref.shape}")
        bad = int(np.count_nonzero(~np.isfinite(out))) if np.issubdtype(out.dtype, np.floating) else 0
        if bad and np.issubdtype(ref.dtype, np.floating) and np.isfinite(ref).all():
            raise VerificationError(
                f"output {name!r} holds {bad} NaN/Inf value(s) of {out.size} where {ref_name}'s are all finite"
                f"{overflow_hint}; the module was not written"
            )
        out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
        with np.errstate(invalid="ignore"):
            diff = np.abs(out64 - ref64)
        # NaN where the reference has NaN (sqrt of a negative input), or the same infinity, agrees.
        diff[(out64 == ref64) | (np.isnan(out64) & np.isnan(ref64))] = 0.0
        err = float(diff.max()) if diff.size else 0.0
        worst = max(worst, err)
        bound = atol + rtol * np.nan_to_num(np.abs(ref64), nan=0.0, posinf=0.0)
        if not np.all(diff <= bound) or not np.isfinite(err):
            raise VerificationError(
                f"output {name!r} diverges from {ref_name}: max abs error {err:.3g} "
                f"(tolerance {atol:g} + {rtol:g}*|ref|); the module was not written"
            )
    return Comparison(max_abs_error=worst, verified=True)


def fastest_instance_ms(engines: list[list[Callable[[], Any]]], max_runs: int,
                        min_seconds: float) -> list[tuple[float, list[float]]]:
    """Per engine, the median of its fastest instance, and every instance's median: all
    instances of all engines timed in alternation (`interleaved_medians_ms`).

    An engine is given as several instances of itself (ONNX Runtime sessions of the same model,
    VMs of the same module) because one instance could stay slow for a whole timing while a
    twin created beside it was not: in one process after tuning, three ORT sessions of squeezenet
    timed in the same alternation read 4.29, 7.36 and 16.04 ms, and in the next run 12.36, 4.60
    and 4.53 (a fresh process: 4.1-4.8), while the TVM module read 5.5-5.7 throughout (2-core EPYC).
    The cause was not found (not the other sessions' spinning, not ORT's thread pinning: a
    pinned and an unpinned session were each the slow one once). The fastest instance of each is
    what a deployment of that engine gets."""
    flat = [fn for instances in engines for fn in instances]
    times = interleaved_medians_ms(flat, max_runs, min_seconds)
    out, start = [], 0
    for instances in engines:
        mine = times[start:start + len(instances)]
        out.append((min(mine), mine))
        start += len(instances)
    return out
