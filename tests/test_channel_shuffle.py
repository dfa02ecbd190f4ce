"""ShuffleNet's channel shuffle on CPU: rewritten channels-last into one gather kernel (no layout
transposes left around it), computing what ONNX Runtime computes; shuffles that are something
else (another axis order) are left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import te, tirx
from tvm.target import Target

from tests import onnx_models
from tests.compiled import assert_matches_ort
from tuner.rewrite import channel_shuffle
from tuner.rewrite.graph import channels_last, fuse_for_tuning, import_onnx
from tuner.load.model_io import load_model

AVX2 = Target({"kind": "llvm", "mcpu": "znver2", "num-cores": 2})


def _shuffle_unit(groups: int = 4, per_group: int = 6, swap: tuple[int, ...] = (0, 2, 1, 3, 4)) -> onnx.ModelProto:
    """Grouped 1x1 conv, ReLU, channel shuffle (reshape, transpose `swap`, reshape), depthwise
    3x3 conv: the order of a ShuffleNet unit."""
    rng = np.random.default_rng(0)
    c = groups * per_group

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.uniform(-0.5, 0.5, shape).astype(np.float32), name)

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], group=groups),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Reshape", ["r1", "split"], ["s1"]),
            helper.make_node("Transpose", ["s1"], ["s2"], perm=list(swap)),
            helper.make_node("Reshape", ["s2", "merge"], ["s3"]),
            helper.make_node("Conv", ["s3", "w2"], ["y"], group=c, pads=[1, 1, 1, 1]),
        ],
        "shuffle_unit",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 7, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 7, 9])],
        [init("w1", (c, per_group, 1, 1)), init("b1", (c,)), init("w2", (c, 1, 3, 3)),
         numpy_helper.from_array(np.array([1, groups, per_group, 7, 9], np.int64), "split"),
         numpy_helper.from_array(np.array([1, c, 7, 9], np.int64), "merge")],
    )
    return helper.make_model(graph, opset_imports=onnx_models.OPSET)


def _rewrites(model: onnx.ModelProto, tmp_path: Path) -> int:
    loaded = load_model(str(onnx_models.save(model, tmp_path / "m.onnx")), {})
    with tvm.transform.PassContext(opt_level=3):
        return channel_shuffle.rewrite(channels_last(import_onnx(loaded)))[1]


def test_the_shuffle_becomes_one_gather_kernel_and_matches_ort(tmp_path: Path) -> None:
    loaded = load_model(str(onnx_models.save(_shuffle_unit(), tmp_path / "m.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), AVX2)
    kernels = {gv.name_hint: f for gv, f in fused.functions.items() if isinstance(f, tirx.PrimFunc)}
    assert len([name for name in kernels if name.startswith("channel_shuffle")]) == 1, list(kernels)
    # No layout transposes are left around it: only the model's input and output ones.
    main = fused["main"].script()
    assert main.count("R.call_tir(transpose") == 2, main
    assert_matches_ort(loaded, fused, AVX2, tmp_path, rtol=1e-5, atol_of_max=1e-5)


@pytest.mark.parametrize("swap", [(0, 1, 2, 3, 4), (0, 2, 1, 4, 3)])
def test_transposes_that_are_no_channel_shuffle_are_left_alone(swap: tuple[int, ...], tmp_path: Path) -> None:
    assert _rewrites(_shuffle_unit(swap=swap), tmp_path) == 0
    assert _rewrites(_shuffle_unit(), tmp_path) == 1


def test_the_gather_is_the_shuffle() -> None:
    """3 groups of 4 channels, against numpy's NCHW shuffle of the same tensor."""
    x = np.arange(2 * 3 * 12, dtype=np.float32).reshape(1, 2, 3, 12)
    placeholder = te.placeholder(x.shape, name="x")
    out = channel_shuffle.shuffle_nhwc(placeholder, 3)
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([placeholder, out])}), target="llvm")
    got = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), got)
    nchw = x.transpose(0, 3, 1, 2).reshape(1, 3, 4, 2, 3).transpose(0, 2, 1, 3, 4).reshape(1, 12, 2, 3)
    np.testing.assert_array_equal(got.numpy(), nchw.transpose(0, 2, 3, 1))
