"""1x1 convolutions on CPU padded to rows that divide into register blocks of 4 to 8 rows
(tuner/rewrite/row_padding.py): which ones are padded, that the padded module computes what ONNX Runtime
computes, and that the padded convolutions are register-blocked on the padded rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tests import onnx_models
from tests.compiled import assert_matches_ort
from tuner.rewrite import row_padding
from tuner.compile import schedule_module
from tuner.rewrite.graph import channels_last, fuse_for_tuning, import_onnx
from tuner.load.model_io import load_model
from tuner.schedules.register_blocking import RULE_NAME

AVX2 = Target({"kind": "llvm", "mcpu": "znver2", "num-cores": 2})


@pytest.mark.parametrize("height,width,extra", [(13, 13, 1), (27, 27, 1), (13, 1, 1), (7, 7, None), (14, 14, None),
                                                (55, 55, None), (3, 3, None), (1, 1, None)])
def test_rows_are_padded_only_where_no_4_to_8_row_block_divides_them(height: int, width: int, extra: int | None) -> None:
    assert row_padding.padded_height(height, width) == extra


def _squeeze_block(seed: int = 0) -> onnx.ModelProto:
    """At 13x13: a 1x1 conv with bias and ReLU, a 1x1 conv, and a 3x3 conv (not a GEMM over rows:
    left as it is), as in squeezenet's last fire module."""
    rng = np.random.default_rng(seed)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.uniform(-0.3, 0.3, shape).astype(np.float32), name)

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2"], ["c2"]),
            helper.make_node("Conv", ["c2", "w3"], ["y"], pads=[1, 1, 1, 1]),
        ],
        "squeeze_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 13, 13])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 13, 13])],
        [init("w1", (40, 32, 1, 1)), init("b1", (40,)), init("w2", (16, 40, 1, 1)), init("w3", (16, 16, 3, 3))],
    )
    return helper.make_model(graph, opset_imports=onnx_models.OPSET)


def test_the_1x1_convs_of_13x13_rows_are_padded(tmp_path: Path) -> None:
    loaded = load_model(str(onnx_models.save(_squeeze_block(), tmp_path / "m.onnx")), {})
    with tvm.transform.PassContext(opt_level=3):
        assert row_padding.rewrite(channels_last(import_onnx(loaded)))[1] == 2


def test_the_padded_module_matches_ort_and_its_convs_are_register_blocked_on_14_rows(tmp_path: Path) -> None:
    loaded = load_model(str(onnx_models.save(_squeeze_block(), tmp_path / "m.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), AVX2, winograd=False)
    scheduled, _ = schedule_module(fused, AVX2, ms.database.MemoryDatabase())
    blocked = [f.script() for gv, f in scheduled.functions.items()
               if isinstance(f, tirx.PrimFunc) and RULE_NAME in f.script() and "conv2d" in gv.name_hint]
    padded = [text for text in blocked if "T.int64(14), T.int64(13)" in text]
    assert len(padded) == 2, blocked
    assert_matches_ort(loaded, fused, AVX2, tmp_path)
