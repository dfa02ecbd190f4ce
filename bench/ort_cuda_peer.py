"""ONNX Runtime's CUDA execution provider on one ONNX model: a peer row of bench_gpu.py.

Run in its own process, with the `onnxruntime-gpu` wheel first on the path (it and the CPU
`onnxruntime` that tuner verifies with are the same module name, so they cannot share a
process). Prints one JSON object: milliseconds per run, inputs and outputs already on the GPU
(IO binding, as tuner's module is timed), plain and with ORT's own CUDA graph capture.

    PYTHONPATH=/tmp/ortgpu python3 bench/ort_cuda_peer.py model.onnx --precision fp32

fp32 runs with TF32 off (`use_tf32=0`), the strict-fp32 peer; fp16 converts the model with
ORT's own `float16` converter (inputs and outputs kept fp32, as tuner's fp16 modules keep them).
`--profile N`: also each kernel's time per inference over N profiled runs (cuda_profile.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import onnx


def _session(model: onnx.ModelProto, tf32: bool, cuda_graph: bool) -> Any:
    import onnxruntime as ort

    options = {"device_id": 0, "use_tf32": int(tf32), "enable_cuda_graph": int(cuda_graph)}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=[("CUDAExecutionProvider", options)])


def _bound(model: onnx.ModelProto, inputs: dict[str, np.ndarray], tf32: bool, cuda_graph: bool) -> tuple[Any, Any]:
    """A session on the CUDA provider and its IO binding: inputs and outputs on the GPU."""
    import onnxruntime as ort

    session = _session(model, tf32, cuda_graph)
    if "CUDAExecutionProvider" not in session.get_providers():
        raise RuntimeError(f"CUDA execution provider not available: {session.get_providers()}")
    binding = session.io_binding()
    for name, value in inputs.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda", 0)
    return session, binding


def _time(model: onnx.ModelProto, inputs: dict[str, np.ndarray], tf32: bool, cuda_graph: bool,
          runs: int, min_seconds: float) -> float:
    session, binding = _bound(model, inputs, tf32, cuda_graph)
    for _ in range(3):  # warm-up (and the graph capture)
        session.run_with_iobinding(binding)
    binding.synchronize_outputs()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * runs:
            break
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--profile", type=int, default=0, help="profile this many runs per kernel (0: no)")
    args = parser.parse_args()
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels PyTorch installed
        ort.preload_dlls()
    model = onnx.load(args.model)
    if args.precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=True)
    initializers = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(0)
    inputs = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        shape = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        inputs[value.name] = rng.uniform(-1, 1, size=shape).astype(dtype)
    result: dict[str, Any] = {"onnxruntime_version": ort.__version__, "precision": args.precision}
    variants = [("ort_cuda", False), ("ort_cuda_graph", True)]
    for name, graph in variants:
        try:
            result[f"{name}_ms"] = _time(model, inputs, tf32=False, cuda_graph=graph, runs=args.runs,
                                         min_seconds=args.min_seconds)
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run is a result too
            result[f"{name}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if args.profile:
        from cuda_profile import kernel_times

        try:
            session, binding = _bound(model, inputs, tf32=False, cuda_graph=False)
            result["profile"] = kernel_times(lambda: session.run_with_iobinding(binding),
                                             binding.synchronize_outputs, args.profile)
        except Exception as exc:  # noqa: BLE001 - the timings above stand without it
            result["profile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
