"""Each kernel of a tuned CUDA module timed three ways: as its tuning record measured it, alone
(the scheduled kernel built by itself, timed by TVM's time evaluator and by CUPTI), and inside
the running module (CUPTI, with and without CUDA graphs). A kernel slower in the module than
alone, or alone than its record, points at what the search does not see.

    python3 bench/gpu_kernels.py resnet50 --precision fp16 --weights he \
        --db sqlite:////tmp/r16n.sqlite --work /tmp/gk --out bench/results/gpu-kernels.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import tirx
from tvm.s_tir.analysis import estimate_tir_flops
from tvm.s_tir.meta_schedule.tune_context import _normalize_mod
from tvm.target import Target

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cuda_profile import kernel_times  # noqa: E402
from kernels import _bindings, built_kernel  # noqa: E402
from models import model_spec  # noqa: E402
from results_file import write_results  # noqa: E402

from tuner.compile import compile_tuned, schedule_module  # noqa: E402
from tuner.rewrite.graph import fuse_for_tuning, import_onnx  # noqa: E402
from tuner.verify.inputs import verification_inputs  # noqa: E402
from tuner.verify.measure import TVMModel  # noqa: E402
from tuner.load.model_io import LoadedModel, load_model  # noqa: E402
from tuner.targets import local_cuda_target  # noqa: E402
from tuner.search.job_database import open_database  # noqa: E402


def alone(func: tirx.PrimFunc, target: Target, iters: int) -> dict[str, float]:
    """The scheduled kernel built by itself on random inputs (which stay in L2 between runs, as
    in the tuning runner): time evaluator median and CUPTI's per-launch kernel time."""
    dev = tvm.cuda(0)
    rt, args = built_kernel(func, target, dev)
    timer = rt.time_evaluator(rt.entry_name, dev, number=50, repeat=5, min_repeat_ms=50)
    prof = kernel_times(lambda: rt[rt.entry_name](*args), dev.sync, iters)
    return {"evaluator_us": float(timer(*args).median) * 1e6,
            "cupti_us": prof["kernel_us"], "cupti_launches": sum(r["launches"] for r in prof["kernels"])}


def in_module(fused: tvm.IRModule, target: Target, database: Any, loaded: LoadedModel, work: Path,
              cuda_graph: bool, iters: int) -> dict[str, Any]:
    """CUPTI's per-kernel times of one inference of the compiled module."""
    compiled = compile_tuned(fused, target, database, cuda_graph=cuda_graph)
    path = work / f"module-{'graph' if cuda_graph else 'nograph'}.so"
    compiled.executable.export_library(str(path))
    model = TVMModel(path, list(loaded.input_shapes), tvm.cuda(0))
    args = model.prepare(verification_inputs(loaded, None, 0)[0])
    return kernel_times(lambda: model.vm["main"](*args), model.device.sync, iters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--weights", default="zoo")
    parser.add_argument("--db", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    spec = model_spec(args.model, args.work, args.weights)
    target_dict = local_cuda_target()
    target = Target(dict(target_dict))
    loaded = load_model(spec)
    fused = fuse_for_tuning(import_onnx(loaded, args.precision), target)
    database = open_database(args.db, target_dict, "bench", "bench", False, False)
    scheduled, _ = schedule_module(fused, target, database)
    calls: dict[str, int] = {}
    for name in _bindings(scheduled["main"]):
        calls[name] = calls.get(name, 0) + 1
    modules = {mode: in_module(fused, target, database, loaded, args.work, mode == "graph", args.iters)
               for mode in ("graph", "nograph")}
    rows = []
    for gv, func in scheduled.functions.items():
        if not isinstance(func, tirx.PrimFunc) or gv.name_hint not in calls:
            continue
        name = gv.name_hint
        record = database.query_tuning_record(_normalize_mod(fused[name]), target, name)  # as MetaSchedule looks it up
        row: dict[str, Any] = {"kernel": name, "calls": calls[name],
                               "gflop": float(estimate_tir_flops(tvm.IRModule({"main": func}))) / 1e9,
                               "record_us": (float(np.mean([float(s) for s in record.run_secs])) * 1e6
                                             if record is not None and record.run_secs else None)}
        row.update(alone(func, target, args.iters))
        for mode, prof in modules.items():
            mine = [k for k in prof["kernels"] if k["name"].startswith(name + "_kernel")]
            row[f"module_{mode}_us_per_call"] = sum(k["us"] for k in mine) / calls[name] if mine else None
        rows.append(row)
        print(f"[kernels] {name[:60]:60s} x{row['calls']}  record {row['record_us'] or float('nan'):7.1f}  "
              f"alone {row['evaluator_us']:7.1f} / cupti {row['cupti_us']:7.1f}  module graph "
              f"{row['module_graph_us_per_call'] or 0:7.1f} nograph {row['module_nograph_us_per_call'] or 0:7.1f} us",
              flush=True)
    rows.sort(key=lambda r: -(r["module_graph_us_per_call"] or 0) * r["calls"])
    summary = {mode: {k: v for k, v in prof.items() if k != "kernels"} for mode, prof in modules.items()}
    write_results({"command": " ".join(sys.argv), "gpu": tvm.cuda(0).device_name, "modules": summary,
                   "kernels": rows}, args.out)
    for mode, s in summary.items():
        print(f"[kernels] module ({mode}): kernels {s['kernel_us']:.1f} us, wall {s['wall_us']:.1f} us per run")
    print(f"[kernels] sum over kernels x calls: record {sum((r['record_us'] or 0) * r['calls'] for r in rows):.1f} us, "
          f"alone {sum(r['cupti_us'] * r['calls'] for r in rows):.1f} us")


if __name__ == "__main__":
    main()
