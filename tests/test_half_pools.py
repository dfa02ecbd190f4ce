"""fp16 imports average in fp32 (tuner/rewrite/half_pools.py): TOPI's average pools sum in their data's
type, and resnet50's final 7x7 average, in fp16, summed past 65504 into inf (every output NaN)
while each value and the average itself were well inside fp16's range."""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax
from tvm.target import Target

from tests import onnx_models
from tests.compiled import assert_matches_ort
from tuner.rewrite.graph import fuse_for_tuning, import_onnx
from tuner.load.model_io import load_model


def test_fp16_average_pools_sum_in_fp32_and_match_onnxruntime(tmp_path: Path) -> None:
    loaded = load_model(str(onnx_models.save(onnx_models.large_average_pools(), tmp_path / "m.onnx")))
    mod = import_onnx(loaded, "fp16")
    pools: list[relax.Call] = []

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and "avg_pool" in expr.op.name:
            pools.append(expr)

    relax.analysis.post_order_visit(mod["main"], visit)
    assert pools and all(p.args[0].ty.dtype == "float32" for p in pools)
    target = Target({"kind": "llvm", "num-cores": 2})
    assert_matches_ort(loaded, fuse_for_tuning(mod, target), target, tmp_path, rtol=2e-2, atol_of_max=2e-2)
