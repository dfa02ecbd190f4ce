"""GPU benchmark: per model and precision, tuner's untuned (dlight) and tuned modules against
its peers on the same GPU: PyTorch eager, torch.compile (default and `reduce-overhead`, which
replays CUDA graphs), ONNX Runtime's CUDA execution provider (plain and with its CUDA graphs).
tuner's module is timed as it is written: with CUDA graphs unless `--no-cuda-graph`.

fp32 peers run with TF32 off (tuner's fp32 kernels are strict fp32); torch's TF32 defaults are
timed too and reported apart (`tf32_*`), never as the bar. The ratio `tuned_vs_best_peer` is
the best strict peer's latency over tuner's (> 1: tuner is faster).

The ONNX model goes to PyTorch through onnx2torch (after tuner's own constant folding: the zoo
builds its weights with ConstantOfShape, which onnx2torch cannot read). ONNX Runtime's CUDA
provider runs in a subprocess (`ort_cuda_peer.py`) from `--ort-gpu-site`, a folder holding the
`onnxruntime-gpu` wheel installed with `pip install --target` (it shares its module name with
the CPU onnxruntime that tuner verifies with). TensorRT is not a peer here: the package registry
holds its Python bindings but not its libraries (`tensorrt_cu13_libs`). Not dependencies of
tuner: the benchmark alone needs torch, onnx2torch and onnxruntime-gpu. fp16 rows of zoo nets
need `--weights he` (see weights.py): the zoo's own weights overflow fp16.

    python3 bench/bench_gpu.py --models squeezenet resnet50 transformer --precisions fp32 fp16 \
        --trials 500 --db sqlite:////tmp/gpu.sqlite --ort-gpu-site /tmp/ortgpu \
        --compile-modes default reduce-overhead --out bench/results/gpu.json

Tuning records go to --db: a second invocation with the same database is a cache hit, so one
model's tuning can be split over several invocations (each result row says how many trials it
ran and how long they took).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cuda_profile import kernel_table  # noqa: E402
from models import is_built, model_spec  # noqa: E402
from results_file import write_results  # noqa: E402

from tuner.config import get_settings  # noqa: E402
from tuner.load.model_io import load_model  # noqa: E402
from tuner.pipeline import RunRequest, run  # noqa: E402
from tuner.progress import LogProgress  # noqa: E402
from tuner.targets import local_cuda_target  # noqa: E402


def torch_ms(fn: Any, runs: int = 50, min_seconds: float = 1.0) -> float:
    """Median of synchronised calls after warm-up, as tuner's own timing does it."""
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    times = []
    for _ in range(max(5, min(runs, int(min_seconds / max(first, 1e-6))))):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def without_dropout(model: onnx.ModelProto) -> onnx.ModelProto:
    """Dropout is the identity at inference, and onnx2torch has no converter for opset-7 Dropout
    (squeezenet): rewire its consumers to its input."""
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Dropout"}
    if not alias:
        return model
    model = copy.deepcopy(model)
    kept = [n for n in model.graph.node if n.op_type != "Dropout"]
    for node in kept:
        node.input[:] = [alias.get(x, x) for x in node.input]
    for out in model.graph.output:
        if out.name in alias:
            raise ValueError("a graph output comes from Dropout")
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def static_reshapes(net: Any) -> int:
    """Give onnx2torch's Reshape modules their constant target shape as Python ints.

    onnx2torch reshapes with `torch.Size(shape_tensor)`, which dynamo cannot trace (a FakeTensor
    is not an int), so torch.compile failed on every converted model with a Reshape. Where the
    shape is a constant of the graph (an initializer: all models here after constant folding),
    the module is swapped for one that holds the shape; ONNX's 0 (copy that input dimension)
    keeps its meaning. Returns how many were swapped."""
    import torch
    from onnx2torch.node_converters.reshape import OnnxReshape

    class StaticReshape(torch.nn.Module):
        def __init__(self, shape: list[int]) -> None:
            super().__init__()
            self.shape = tuple(int(d) for d in shape)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.reshape(x, tuple(x.shape[i] if d == 0 else d for i, d in enumerate(self.shape)))

    swapped = 0
    for node in list(net.graph.nodes):
        if node.op != "call_module" or not isinstance(net.get_submodule(node.target), OnnxReshape):
            continue
        shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("shape")
        if not isinstance(shape, torch.fx.Node) or shape.op != "get_attr":
            continue
        value = net
        for part in shape.target.split("."):
            value = getattr(value, part)
        net.add_submodule(node.target, StaticReshape(value.tolist()))
        node.args, node.kwargs = (node.args[0],), {}
        swapped += 1
    net.graph.eliminate_dead_code()
    net.recompile()
    return swapped


def torch_peers(spec: str, precision: str, compile_modes: list[str]) -> dict[str, Any]:
    """PyTorch eager and torch.compile latencies of the same ONNX model on the same GPU: fp32
    with TF32 off (the strict peers), then with torch's TF32 defaults (`tf32_*`, for reference)."""
    import torch
    from onnx2torch import convert

    loaded = load_model(spec)
    net = convert(without_dropout(loaded.proto))
    static_reshapes(net)
    net = net.eval().cuda()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    net = net.to(dtype)
    rng = np.random.default_rng(0)
    inputs = [torch.from_numpy(rng.uniform(-1, 1, size=s).astype(np.float32)).cuda().to(dtype)
              for s in loaded.input_shapes.values()]
    defaults = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    out: dict[str, Any] = {"tf32_defaults": {"cudnn": defaults[0], "matmul": defaults[1]}}
    settings = [("", False)] + ([("tf32_", True)] if precision == "fp32" else [])
    try:
        for prefix, tf32 in settings:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
            torch._dynamo.reset()
            with torch.inference_mode():
                out[f"{prefix}eager_ms"] = torch_ms(lambda: net(*inputs))
                _time_compiled(net, inputs, compile_modes, out, f"{prefix}compile")
            if "resnet50" in spec:
                out.update({f"{prefix}{k}": v for k, v in torchvision_resnet50(precision, compile_modes).items()})
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = defaults
    return out


def ort_cuda_peers(path: str, precision: str, site: Path | None, profile: int = 0) -> dict[str, Any]:
    """ONNX Runtime's CUDA execution provider, in a subprocess that imports onnxruntime-gpu
    (`profile` > 0: with its per-kernel profile over that many runs)."""
    if site is None:
        return {"error": "not run: no --ort-gpu-site"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("ort_cuda_peer.py")), path,
                           "--precision", precision, "--profile", str(profile)],
                          capture_output=True, text=True, env=env, timeout=900)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr or done.stdout).strip()[-600:]}
    return json.loads(lines[-1])


def _time_compiled(net: Any, inputs: list, modes: list[str], out: dict[str, Any], prefix: str) -> None:
    import torch

    for mode in modes:
        try:
            compiled = torch.compile(net, mode=mode)
            t0 = time.perf_counter()
            compiled(*inputs)
            torch.cuda.synchronize()
            out[f"{prefix}_{mode}_seconds"] = round(time.perf_counter() - t0, 1)
            out[f"{prefix}_{mode}_ms"] = torch_ms(lambda: compiled(*inputs))
        except Exception as exc:  # a failed compile is a result too
            out[f"{prefix}_{mode}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def torchvision_resnet50(precision: str, compile_modes: list[str]) -> dict[str, Any]:
    """torchvision's own resnet50 (random weights: only its speed counts), the peer that
    torch.compile handles where the onnx2torch conversion does not compile."""
    import torch

    try:
        import torchvision
    except ImportError:
        return {"torchvision_error": "torchvision is not installed"}
    dtype = torch.float16 if precision == "fp16" else torch.float32
    net = torchvision.models.resnet50().eval().cuda().to(dtype)
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=dtype)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        out["torchvision_eager_ms"] = torch_ms(lambda: net(x))
        _time_compiled(net, [x], compile_modes, out, "torchvision_compile")
    return out


def tuner_profile(module: Path, spec: str, iters: int) -> dict[str, Any]:
    """Per-kernel profile of tuner's written module on the GPU (its inputs as it was verified with)."""
    import tvm

    from cuda_profile import kernel_times
    from tuner.verify.inputs import verification_inputs
    from tuner.verify.measure import TVMModel

    loaded = load_model(spec)
    model = TVMModel(module, list(loaded.input_shapes), tvm.cuda())
    args = model.prepare(verification_inputs(loaded, None, 0)[0])
    return kernel_times(lambda: model.vm["main"](*args), model.device.sync, iters)


def bench_one(name: str, precision: str, trials: int, db: str, work: Path, compile_modes: list[str],
              refine: bool = False, weights: str = "zoo", ort_site: Path | None = None,
              cuda_graph: bool = True, profile: int = 0) -> dict:
    spec = model_spec(name, work, weights)
    target = local_cuda_target()
    t0 = time.perf_counter()
    out_dir = work / f"{name}-{precision}"
    report = run(RunRequest(model=spec, target=target, trials=trials, out_dir=out_dir,
                            db_url=db, precision=precision, refine=refine, cuda_graph=cuda_graph),
                 get_settings(), LogProgress(30))
    row: dict[str, Any] = {
        "model": name, "weights": "built here" if is_built(name) else weights,
        "precision": precision, "trials_budget": trials, "trials": report["trials"],
        "tasks": report["tasks"], "tasks_from_db": report["tasks_from_db"], "tasks_tuned": report["tasks_tuned"],
        "tasks_default_measured": report["tasks_default_measured"],
        "tuning_seconds": report["tuning_seconds"], "run_seconds": round(time.perf_counter() - t0, 1),
        "cuda_graph": report["cuda_graph"],
        "latency_ms": {"untuned_dlight": report["latency_ms"]["untuned"], "tuned": report["latency_ms"]["tuned"],
                       "onnxruntime_cpu": report["latency_ms"]["onnxruntime"]},
        "verified": report["verified"], "max_abs_error": report["max_abs_error"], "tolerance": report["tolerance"],
        "loops": report["loops"], "hardware": report["hardware"],
    }
    try:
        row["torch"] = torch_peers(spec, precision, compile_modes)
    except Exception:
        row["torch"] = {"error": traceback.format_exc(limit=3)[-600:]}
    onnx_path = spec if not spec.startswith("zoo:") else str(work / f"{name}.onnx")
    if spec.startswith("zoo:"):
        onnx.save(load_model(spec).proto, onnx_path)
    row["onnxruntime_cuda"] = ort_cuda_peers(onnx_path, precision, ort_site, profile)
    if profile:
        try:
            row["profile"] = tuner_profile(out_dir / "model.so", spec, profile)
        except Exception:
            row["profile"] = {"error": traceback.format_exc(limit=3)[-600:]}
    tuned = row["latency_ms"]["tuned"]
    strict = {**{f"torch_{k}": v for k, v in row["torch"].items() if k.endswith("_ms") and not k.startswith("tf32_")},
              **{k: v for k, v in row["onnxruntime_cuda"].items() if k.endswith("_ms")}}
    if strict:
        best = min(strict, key=strict.get)
        row["best_peer"] = {"name": best[:-3], "ms": strict[best]}
        row["tuned_vs_best_peer"] = strict[best] / tuned
    return row


def print_profiles(row: dict[str, Any]) -> None:
    """Both per-kernel profiles (tuner's module, ORT's CUDA provider), slowest kernels first."""
    for label, prof in (("tuner", row.get("profile")), ("onnxruntime cuda", row["onnxruntime_cuda"].get("profile"))):
        if not prof:
            continue
        if "error" in prof:
            print(f"[bench]   {label} profile failed: {prof['error'][-300:]}", flush=True)
            continue
        print(f"[bench]   {label}: {len(prof['kernels'])} kernels, {prof['kernel_us']:.1f} us of kernels, GPU busy "
              f"{prof['gpu_busy_us']:.1f} us, wall {prof['wall_us']:.1f} us per run (profiled)", flush=True)
        for line in kernel_table(prof["kernels"]):
            print(f"[bench]     {line}", flush=True)
    if "profile_error" in row["onnxruntime_cuda"]:
        print(f"[bench]   onnxruntime cuda profile failed: {row['onnxruntime_cuda']['profile_error']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["squeezenet", "resnet50", "transformer"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--db", required=True, help="tuning database URL (reuse it to split tuning over calls)")
    parser.add_argument("--compile-modes", nargs="*", default=["default"], help="torch.compile modes to time")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    parser.add_argument("--refine", action="store_true",
                        help="search on from the records in --db (split a long tuning over several calls)")
    parser.add_argument("--weights", choices=["zoo", "he"], default="zoo",
                        help="zoo nets with their placeholder weights (fp16 overflows them) or He-initialized ones")
    parser.add_argument("--work", type=Path, help="keep models, modules and MetaSchedule's logs here")
    parser.add_argument("--ort-gpu-site", type=Path, help="folder with onnxruntime-gpu installed (pip --target)")
    parser.add_argument("--no-cuda-graph", action="store_true", help="time tuner's module without CUDA graphs")
    parser.add_argument("--profile-kernels", type=int, default=0, metavar="N",
                        help="also profile each kernel of tuner's module and of ORT's CUDA provider over N runs")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tuner-gpu-bench-") as tmp:
        if args.work:
            args.work.mkdir(parents=True, exist_ok=True)
            tmp = str(args.work)
        for name in args.models:
            for precision in args.precisions:
                row = bench_one(name, precision, args.trials, args.db, Path(tmp), args.compile_modes, args.refine,
                                args.weights, args.ort_gpu_site, not args.no_cuda_graph, args.profile_kernels)
                rows.append(row)
                lat, t, o = row["latency_ms"], row["torch"], row["onnxruntime_cuda"]
                peers = ", ".join(f"{k[:-3]} {v:.3f} ms" for k, v in [*t.items(), *o.items()] if k.endswith("_ms"))
                best = row.get("best_peer")
                print(f"[bench] {name} {precision}: dlight {lat['untuned_dlight']:.3f} ms, tuned {lat['tuned']:.3f} ms "
                      f"(cuda graph {row['cuda_graph']}, {row['trials']} trials, {row['tuning_seconds']:.0f} s); "
                      f"peers: {peers or 'none'}; best strict peer {best['name'] if best else '-'}: "
                      f"tuned is {row.get('tuned_vs_best_peer') or 0:.2f}x as fast", flush=True)
                for key in ("error",):
                    for where in (t, o):
                        if key in where:
                            print(f"[bench]   peer error: {where[key][-300:]}", flush=True)
                print_profiles(row)
                write_results({"python": sys.version.split()[0], "command": " ".join(sys.argv), "results": rows},
                              args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
