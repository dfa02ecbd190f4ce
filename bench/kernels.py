"""Per-kernel figures of a compiled model: each scheduled kernel timed alone, its GFLOP, GFLOP/s
and share of the CPU's measured FMA peak. Tells which kernels hold the time and how far each
is from the hardware."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import tvm
from tvm import tirx
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.analysis import estimate_tir_flops
from tvm.target import Target

from core_latency import round_trip_ns  # a sibling: bench/ is on the path of every benchmark script
from tuner.cluster.worker_tasks import cpu_times
from tuner.compile import schedule_module
from tuner.db.database import SQLDatabase
from tuner.rewrite.graph import fuse_for_tuning, import_onnx
from tuner.load.model_io import LoadedModel, load_model
from tuner.schedules.lowering import lowering_config
from tuner.search.job_database import open_database
from tuner.targets import complete_cpu_target, host_cpu_target


def built_kernel(func: tirx.PrimFunc, target: Target, dev: tvm.runtime.Device) -> tuple[Any, list[Any]]:
    """One scheduled kernel compiled by itself (lowered as the builders lower it) and random
    inputs for it on `dev`."""
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with tvm.transform.PassContext(config=lowering_config(mod)):
        lib = tvm.compile(mod, target=target)
    rt = lib.mod if hasattr(lib, "mod") else lib
    rng = np.random.default_rng(0)
    args = []
    for info in ms.arg_info.ArgInfo.from_prim_func(func):
        shape, dtype = [int(s) for s in info.shape], str(info.dtype)
        host = rng.integers(0, 2, size=shape).astype(dtype) if "int" in dtype else rng.uniform(-1, 1, shape).astype(dtype)
        args.append(tvm.runtime.tensor(host, dev))
    return rt, args


def kernel_timers(func: tirx.PrimFunc, target: Target, repeat: int = 5) -> tuple[Callable[[], float], Callable[[], float]]:
    """One kernel built once; each call of either result times it again: the median
    milliseconds on random inputs. Warm (first): back to back, its weights and output in cache
    (the kernel's own speed). Cold (second): lone calls after its weights were flushed from the
    caches, as the tuning runner times candidates (`cpu_times`) and as a model runs them.
    Kernels compared on this VM are timed by turns, so that a slow stretch of it falls on all
    of them."""
    rt, args = built_kernel(func, target, tvm.cpu())
    timer = rt.time_evaluator(rt.entry_name, tvm.cpu(), number=5, repeat=repeat, min_repeat_ms=20)
    return (lambda: float(timer(*args).median) * 1e3,
            lambda: float(np.median(cpu_times(rt, tvm.cpu(), args, 4 * repeat))) * 1e3)


def kernel_timer(func: tirx.PrimFunc, target: Target, repeat: int = 5) -> Callable[[], float]:
    """The warm timer of `kernel_timers`."""
    return kernel_timers(func, target, repeat)[0]


def cpu_target(mcpu: str | None = None) -> dict[str, Any]:
    """The host CPU's target, or with `mcpu` code for that CPU on this host (`znver3`: the AVX2
    code on an AVX-512 CPU); an `mcpu` LLVM does not know is refused (`complete_cpu_target`)."""
    return complete_cpu_target({"kind": "llvm", "mcpu": mcpu}) if mcpu else host_cpu_target()


def model_on_database(model: str, target_dict: dict[str, Any], db_url: str,
                      fast_math: bool = True) -> tuple[LoadedModel, tvm.IRModule, SQLDatabase]:
    """The model loaded, fused as tuning and compilation fuse it, and the tuning database a
    benchmark compiles it with (as team and job "bench")."""
    loaded = load_model(model, {})
    fused = fuse_for_tuning(import_onnx(loaded), Target(dict(target_dict)), fast_math)
    return loaded, fused, open_database(db_url, target_dict, "bench", "bench", False, False)


def kernel_table(model: str, target_dict: dict[str, Any], db_url: str, peak_gflops: float,
                 fast_math: bool = True) -> list[dict[str, Any]]:
    """Every kernel of `model` as compiled from the database at `db_url` (records, else
    defaults), slowest first: warm times (`ms`, and the rates from them) and cold ones
    (`cold_ms`, as the records were timed), against the peak measured before."""
    return kernel_rounds(model, target_dict, db_url, lambda: peak_gflops, rounds=1, fast_math=fast_math)["kernels"]


def kernel_rounds(model: str, target_dict: dict[str, Any], db_url: str, peak: Callable[[], float],
                  rounds: int = 5, fast_math: bool = True) -> dict[str, Any]:
    """`kernel_table` timed by turns: every round measures the cores' round trip and the FMA
    peak (`peak()`), then times each kernel once, in an order rotated from round to round. A
    kernel's share of the peak is taken within each round (its rate over that round's peak) and
    its median over the rounds reported: the VM moves its vCPUs between cores that share an L3
    and cores that do not (and the peak, and a kernel alone, up to 2x) from minute to minute, so
    a kernel timed once against a peak timed minutes before says more about the VM than about
    the kernel. `ms` is the median of the rounds; `pct_of_peak_rounds` and the table's `rounds`
    (peak and round trip per round) keep what each round saw."""
    target = Target(dict(target_dict))
    _, fused, database = model_on_database(model, target_dict, db_url, fast_math)
    scheduled, _ = schedule_module(fused, target, database)
    kernels = []
    for name, func, calls in called_kernels(scheduled):
        warm, cold = kernel_timers(func, target)
        kernels.append({"kernel": name, "calls": calls, "flops": float(estimate_tir_flops(tvm.IRModule({"main": func}))),
                        "warm": warm, "cold": cold, "ms": [], "cold_ms": [], "pct": [],
                        "register_blocked": "tuner.register_blocked" in func.script()})
    seen = []
    for r in range(rounds):
        trip, round_peak = round_trip_ns(), peak()
        seen.append({"core_round_trip_ns": trip, "peak_gflops": round_peak})
        shift = r % max(1, len(kernels))
        for k in kernels[shift:] + kernels[:shift]:
            k["ms"].append(k["warm"]())
            k["cold_ms"].append(k["cold"]())
            k["pct"].append(100 * k["flops"] / k["ms"][-1] / 1e6 / round_peak)
    rows = []
    for k in kernels:
        ms_ = float(np.median(k["ms"]))
        rows.append({
            "kernel": k["kernel"], "calls": k["calls"], "gflop": k["flops"] / 1e9, "ms": ms_,
            "cold_ms": float(np.median(k["cold_ms"])), "gflops_per_s": k["flops"] / ms_ / 1e6,
            "pct_of_peak": float(np.median(k["pct"])), "ms_rounds": k["ms"], "pct_of_peak_rounds": k["pct"],
            "register_blocked": k["register_blocked"],
        })
    return {"rounds": seen, "kernels": sorted(rows, key=lambda r: -r["ms"] * r["calls"])}


def called_kernels(scheduled: tvm.IRModule) -> list[tuple[str, tirx.PrimFunc, int]]:
    """Each kernel the module's `main` calls: its name, its PrimFunc and how many calls."""
    calls: dict[str, int] = {}
    for binding in _bindings(scheduled["main"]):
        calls[binding] = calls.get(binding, 0) + 1
    return [(gv.name_hint, func, calls[gv.name_hint]) for gv, func in scheduled.functions.items()
            if isinstance(func, tirx.PrimFunc) and gv.name_hint in calls]


def _bindings(main: Any) -> list[str]:
    """The kernels `main` calls, once per call."""
    names: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, tvm.relax.Call) and node.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            names.append(node.args[0].name_hint)

    tvm.relax.analysis.post_order_visit(main, visit)
    return names
