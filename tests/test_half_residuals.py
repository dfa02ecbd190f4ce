"""fp16 imports keep the residual stream and its layer norms in fp16 (tuner/rewrite/half_residuals.py):
one cast of the model's input instead of a cast kernel before every matmul that reads a layer
norm, and the module still computes what ONNX Runtime computes in fp32, within fp16's tolerance."""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax
from tvm.target import Target

from tests import onnx_models
from tests.compiled import assert_matches_ort
from tuner.rewrite.graph import fuse_for_tuning, import_onnx
from tuner.load.model_io import load_model

H100 = Target({"kind": "cuda", "arch": "sm_90", "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
               "thread_warp_size": 32, "host": {"kind": "llvm"}})


def _loaded(tmp_path: Path):  # noqa: ANN202
    return load_model(str(onnx_models.save(onnx_models.residual_layer_norms(), tmp_path / "m.onnx")))


def _calls(mod: tvm.IRModule, op: str) -> list[relax.Call]:
    found: list[relax.Call] = []

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op:
            found.append(expr)

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


def test_layer_norms_and_residual_adds_run_in_fp16_with_one_cast_of_the_input(tmp_path: Path) -> None:
    mod = import_onnx(_loaded(tmp_path), "fp16")
    norms = _calls(mod, "relax.nn.layer_norm")
    assert len(norms) == 2 and all(n.ty.dtype == "float16" for n in norms)
    assert all(a.ty.dtype == "float16" for a in _calls(mod, "relax.add"))
    param = mod["main"].params[0]
    assert len([c for c in _calls(mod, "relax.astype") if c.args[0].same_as(param)]) == 1
    assert mod["main"].ret_ty.dtype == "float32"  # the model's output keeps its type
    # On the GPU: no cast kernel but the input's (and the output's, fused into the last norm).
    fused = fuse_for_tuning(mod, H100)
    kernels = [gv.name_hint for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert [k for k in kernels if k.startswith("cast")] == ["cast"], kernels


def test_the_fp16_module_matches_onnxruntime_in_fp32_within_fp16_tolerance(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    target = Target({"kind": "llvm", "num-cores": 2})
    fused = fuse_for_tuning(import_onnx(loaded, "fp16"), target)
    assert_matches_ort(loaded, fused, target, tmp_path, rtol=2e-2, atol_of_max=2e-2)
