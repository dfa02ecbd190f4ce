"""A batch norm after a biased convolution folds into it (tuner/rewrite/conv_bias_norms.py): the bias
moves into the norm's mean, FoldBatchnormToConv2D then applies, and no elementwise norm op nor
a kernel of its own for the ReLU after it is left (shufflenet's first convolution had both)."""

from __future__ import annotations

from pathlib import Path

from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tests import onnx_models
from tests.compiled import assert_matches_ort
from tuner.rewrite.graph import fuse_for_tuning, import_onnx
from tuner.load.model_io import load_model

NORM_OPS = ("batch_norm", "R.subtract", "R.divide", "R.multiply", "R.sqrt")


def test_norms_of_biased_convolutions_fold_into_them_and_match_onnxruntime(tmp_path: Path) -> None:
    loaded = load_model(str(onnx_models.save(onnx_models.conv_bn_residual(biased=True), tmp_path / "m.onnx")))
    mod = import_onnx(loaded)
    text = mod.script()
    assert not [op for op in NORM_OPS if op in text], text
    assert text.count("R.nn.conv2d") == 2

    target = Target({"kind": "llvm", "num-cores": 2})
    fused = fuse_for_tuning(mod, target, winograd=False)
    tasks = [t.task_name for t in ms.relax_integration.extract_tasks(fused, target)]
    # Both ReLUs fused into their convolutions (the rest are the NHWC layout's transposes).
    assert sum("conv2d" in name for name in tasks) == 2 and not [n for n in tasks if "relu" in n and "conv2d" not in n], tasks
    assert_matches_ort(loaded, fused, target, tmp_path)
