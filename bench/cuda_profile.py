"""Per-kernel GPU time of one inference, as CUPTI records it (through PyTorch's profiler, which
traces every kernel the process launches, whichever library launched it: TVM's module, ONNX
Runtime's CUDA provider, kernels replayed from a CUDA graph).

Used by bench_gpu.py (`--profile-kernels`) on tuner's module and by ort_cuda_peer.py on ONNX
Runtime's session, so that the two are cut the same way: which kernels of tuner's module are
behind the peer's, and how much of a run is the GPU idle between kernels (launch overhead).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Chrome-trace categories of GPU work (kernels, and the copies and fills between them).
GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def kernel_times(call: Callable[[], Any], sync: Callable[[], Any], iters: int = 20) -> dict[str, Any]:
    """`call` (one inference) profiled `iters` times after a warm-up: per kernel name its launches
    and microseconds per inference, the GPU's busy time per inference (the union of its kernels'
    spans) and the wall time per inference under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        call()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(iters):
            call()
        sync()
        wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text()).get("traceEvents", [])
    gpu = [e for e in events if e.get("cat") in GPU_CATEGORIES and e.get("ph") == "X"]
    per: dict[str, list[float]] = {}
    for e in gpu:
        per.setdefault(f"[{e['cat']}] {e['name']}" if e["cat"] != "kernel" else e["name"], []).append(float(e["dur"]))
    rows = sorted(({"name": name, "launches": len(d) / iters, "us": sum(d) / iters} for name, d in per.items()),
                  key=lambda r: -r["us"])
    return {"iters": iters, "kernels": rows, "kernel_us": sum(r["us"] for r in rows),
            "gpu_busy_us": _union_us(gpu) / iters, "wall_us": wall * 1e6 / iters}


def _union_us(events: list[dict[str, Any]]) -> float:
    """Microseconds in which at least one of `events` ran (overlapping spans counted once)."""
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in events)
    total, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def kernel_table(rows: list[dict[str, Any]], top: int = 15) -> list[str]:
    """Lines of the slowest `top` kernels: microseconds per inference, launches, name."""
    return [f"{r['us']:9.1f} us  x{r['launches']:<5g} {r['name'][:110]}" for r in rows[:top]]
