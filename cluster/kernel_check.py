"""Whether a scheduled kernel computes what its workload says. Runs inside a worker process.

MetaSchedule measures time, never output: a schedule that TVM lowers to wrong code (an fp16
tensor-core kernel did on an H200) would otherwise become its task's best record, and a shared
database would serve it to every team. The candidate is built from its scheduled module with its
layout-rewrite block kept (so it takes the workload's own argument layouts); the reference is
the workload's unscheduled PrimFunc built for the host CPU, which no schedule touched. Both run
on the same random arguments, and every argument buffer is compared afterwards: the ones either
kernel wrote are its outputs, the rest must not have changed.

Kept free of MetaSchedule imports, like the rest of the worker code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# (atol, rtol) per output dtype, as the model's verification uses them.
Tolerances = dict[str, tuple[float, float]]


def _visit(root: Any, kinds: tuple[type, ...], fn: Any) -> None:
    """Call fn on every node of these kinds under root (TVM 0.27 exposes no TIR post-order
    visitor to Python; tvm_ffi's structural visitor walks any IR)."""
    import tvm_ffi

    def hit(node: Any, visitor: Any) -> None:
        fn(node)
        visitor.default_visit(node)

    tvm_ffi.structural_visit(root, [(kinds, hit), (object, lambda node, visitor: visitor.default_visit(node))])


def index_bounds(func: Any) -> dict[str, int]:
    """Integer parameters whose values index another buffer, and the smallest extent they index.

    Random indices must stay inside what they index (a Gather's table): out of range, a correct
    kernel reads outside its buffer and the comparison means nothing (or crashes)."""
    from tvm.ir.expr import TensorLoad
    from tvm.ir.prim.expr import IntImm
    from tvm.tirx.stmt import BufferStore

    int_params = [p for p in func.params if "int" in str(p.dtype)]
    bounds: dict[str, int] = {}

    def indexing_params(index: Any) -> list[Any]:
        found: list[Any] = []
        _visit(index, (TensorLoad,), lambda load: found.extend(p for p in int_params if load.source.same_as(p)))
        return found

    def access(node: Any) -> None:
        shape = node.source.shape if isinstance(node, TensorLoad) else node.buffer.shape
        for dim, index in enumerate(node.indices):
            if dim < len(shape) and isinstance(shape[dim], IntImm):
                for param in indexing_params(index):
                    bounds[param.name] = min(bounds.get(param.name, int(shape[dim])), int(shape[dim]))

    if int_params:
        _visit(func.body, (TensorLoad, BufferStore), access)
    return bounds


def random_arguments(func: Any, seed: int) -> list[np.ndarray]:
    """One array per parameter: floats in [-1, 1], index parameters within what they index."""
    bounds = index_bounds(func)
    rng = np.random.default_rng(seed)
    arrays = []
    for param in func.params:
        shape = [int(s) for s in param.shape]
        dtype = str(param.dtype)
        if dtype == "bool":
            arrays.append(rng.integers(0, 2, size=shape).astype(bool))
        elif "int" in dtype:
            arrays.append(rng.integers(0, max(1, bounds.get(param.name, 2)), size=shape).astype(dtype))
        else:
            arrays.append(rng.uniform(-1, 1, size=shape).astype(dtype))
    return arrays


def _run(lib: Any, dev: Any, arrays: list[np.ndarray]) -> list[np.ndarray]:
    import tvm

    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    lib[lib.entry_name](*args)
    dev.sync()
    return [a.numpy() for a in args]


def _worst(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> tuple[bool, float, int]:
    """(within tolerance, max abs error, flat index of the element furthest beyond its bound).
    NaN and infinities agree where the reference has the same."""
    g, w = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    if not w.size:
        return True, 0.0, 0
    same_special = (np.isnan(g) & np.isnan(w)) | (np.isinf(g) & (g == w))
    err = np.where(same_special, 0.0, np.abs(g - w))
    err = np.where(np.isnan(err), np.inf, err)
    excess = err - (atol + rtol * np.abs(np.where(np.isfinite(w), w, 0.0)))
    worst = int(np.argmax(excess))
    return not bool(excess[worst] > 0), float(err.max()), worst


def kernel_precision(arrays: list[np.ndarray]) -> str:
    """The float dtype whose tolerance a kernel's outputs get: the lowest precision any of its
    buffers holds. A mixed-precision kernel (fp16 matmul, fp32 epilogue) rounds through fp16,
    so its fp32 outputs differ from the reference by fp16 ulps wherever the two accumulate in
    another order (seen on an H200: 0.0078 at 9.0, one fp16 ulp), as the model's fp16
    verification allows."""
    dtypes = {str(a.dtype) for a in arrays}
    for low in ("float16", "bfloat16"):
        if low in dtypes:
            return low
    return "float32"


def compare_outputs(names: list[str], got: list[np.ndarray], want: list[np.ndarray],
                    tolerances: Tolerances) -> str | None:
    """None when every buffer agrees, else why not (the first buffer that differs)."""
    precision = kernel_precision(want)
    for name, g, w in zip(names, got, want):
        dtype = str(w.dtype)
        if w.dtype.kind in "biu":
            if not np.array_equal(g, w):
                return f"wrong output: {name} ({dtype}) differs in {int((g != w).sum())} of {w.size} elements"
            continue
        atol, rtol = tolerances.get(precision, tolerances["float32"])
        ok, err, at = _worst(g, w, atol, rtol)
        if not ok:
            return (f"wrong output: max abs error {err:.4g} in {name} ({dtype}; furthest beyond the {precision} "
                    f"tolerance {atol:g} + {rtol:g}*|ref|: element {at}, got {g.ravel()[at]:.6g}, reference "
                    f"{w.ravel()[at]:.6g})")
    return None


def check_kernel(candidate_json: str, workload_json: str, target: dict[str, Any], tolerances: Tolerances,
                 seed: int = 0) -> tuple[bool, str]:
    """Build the candidate for `target` and the workload for the host CPU, run both on the same
    random arguments and compare. Returns (correct, what was found)."""
    import tvm
    from tvm.driver import build as tvm_build
    from tvm.target import Target

    from tuner.schedules.lowering import lowering_config

    candidate = tvm.ir.load_json(candidate_json)
    workload = tvm.ir.load_json(workload_json)
    tgt = Target(target)
    with tvm.transform.PassContext(config=lowering_config(candidate_json)):
        cand_lib = tvm_build(candidate, target=tgt)
    host = tgt if tgt.kind.name == "llvm" else (tgt.host or Target("llvm"))
    ref_lib = tvm_build(workload, target=host)

    func = workload["main"]
    arrays = random_arguments(func, seed)
    device = tvm.runtime.device("cpu" if tgt.kind.name == "llvm" else tgt.kind.name, 0)
    got = _run(cand_lib, device, arrays)
    want = _run(ref_lib, tvm.runtime.cpu(0), arrays)
    names = [str(p.name) for p in func.params]
    problem = compare_outputs(names, got, want, tolerances)
    if problem is not None:
        return False, problem
    return True, f"matches the unscheduled kernel on {host.kind.name} within tolerance"
