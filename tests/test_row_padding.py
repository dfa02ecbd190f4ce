"""Convolutions on CPU computed as a GEMM over padded rows inside their kernel
(tuner/rewrite/row_padding.py): which ones are padded for which ISA, that the padded module computes
what ONNX Runtime computes, and that the GEMM is register-blocked over the padded rows, unpredicated."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tests import onnx_models
from tests.compiled import assert_matches_ort
from tuner.rewrite import row_padding
from tuner.compile import schedule_module
from tuner.rewrite.graph import channels_last, fuse_for_tuning, import_onnx
from tuner.load.model_io import load_model
from tuner.schedules.isa import VectorISA
from tuner.schedules.register_blocking import RULE_NAME

AVX2 = Target({"kind": "llvm", "mcpu": "znver2", "num-cores": 2})
AVX2_ISA, AVX512_ISA = VectorISA("avx2", 8, 16), VectorISA("avx512", 16, 32)


def _padded_kernels(fused: tvm.IRModule) -> dict[str, str]:
    """The padded-rows kernels of `fused` on default AVX2 schedules, by name, as TVMScript."""
    scheduled, _ = schedule_module(fused, AVX2, ms.database.MemoryDatabase())
    return {gv.name_hint: f.script() for gv, f in scheduled.functions.items()
            if isinstance(f, tirx.PrimFunc) and "padded_rows" in gv.name_hint}


@pytest.mark.parametrize("rows,channels,isa,padded", [
    (196, 1024, AVX2_ISA, 198),  # resnet50's 14x14 layers: 4x2 -> 6x2
    (49, 512, AVX2_ISA, 50),  # its 7x7 ones: 7x1 -> 5x2
    (169, 1000, AVX2_ISA, 175),  # 1000 channels: 13x1 (spills on 16 registers) -> 7x1
    (169, 1008, AVX2_ISA, 174),  # squeezenet's classifier as group_padding widens it: 6x2
    (128, 1024, AVX2_ISA, None),  # the transformer's rows: 4x2 divides, 6x2 would waste too much for its gain
    (196, 1024, AVX512_ISA, None),  # 7x2 divides
    (169, 1008, AVX512_ISA, 174),  # 13x1 -> 6x3
    (1, 1000, AVX2_ISA, None),
])
def test_rows_are_padded_where_a_better_register_block_pays_for_the_extra_rows(
        rows: int, channels: int, isa: VectorISA, padded: int | None) -> None:
    assert row_padding.padded_rows(rows, channels, isa) == padded
    if padded is not None:
        assert padded <= rows * row_padding.MAX_WASTE


def _squeeze_block(seed: int = 0) -> onnx.ModelProto:
    """At 13x13: a 1x1 conv with bias and ReLU, a 1x1 conv, and a 3x3 conv (not a GEMM over rows:
    left as it is), as in squeezenet's last fire module; then a 1x1 conv of stride 2 (7x7 rows)
    with bias and ReLU, as resnet50's downsampling shortcuts."""
    init = functools.partial(onnx_models.uniform_initializer, np.random.default_rng(seed))

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2"], ["c2"]),
            helper.make_node("Conv", ["c2", "w3"], ["c3"], pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["c3", "w4", "b4"], ["c4"], strides=[2, 2]),
            helper.make_node("Relu", ["c4"], ["y"]),
        ],
        "squeeze_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 13, 13])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 7, 7])],
        [init("w1", (40, 32, 1, 1)), init("b1", (40,)), init("w2", (16, 40, 1, 1)), init("w3", (16, 16, 3, 3)),
         init("w4", (32, 16, 1, 1)), init("b4", (32,))],
    )
    return helper.make_model(graph, opset_imports=onnx_models.OPSET)


def test_the_1x1_convs_are_padded_for_avx2_and_not_the_3x3_one(tmp_path: Path) -> None:
    loaded = load_model(str(onnx_models.save(_squeeze_block(), tmp_path / "m.onnx")), {})
    with tvm.transform.PassContext(opt_level=3):
        assert row_padding.rewrite(channels_last(import_onnx(loaded)), AVX2_ISA)[1] == 3


def test_the_padded_module_matches_ort_and_its_gemms_are_register_blocked_over_the_padded_rows(tmp_path: Path) -> None:
    loaded = load_model(str(onnx_models.save(_squeeze_block(), tmp_path / "m.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), AVX2, winograd=False)
    padded = _padded_kernels(fused)
    assert len(padded) == 3, list(padded)
    rows = {row_padding.padded_rows(169, 40, AVX2_ISA), row_padding.padded_rows(169, 16, AVX2_ISA),
            row_padding.padded_rows(49, 32, AVX2_ISA)}
    for name, text in padded.items():
        assert RULE_NAME in text, name
        # The GEMM's accumulators span the padded rows; only the epilogue, which writes the
        # real ones, has a predicate.
        assert any(f"T.int64({r}), T.int64(" in text for r in rows), text
        assert text.count("T.where(") == 1, text
    assert_matches_ort(loaded, fused, AVX2, tmp_path)


def _strided_block(seed: int = 0) -> onnx.ModelProto:
    """resnet50's convolutions that Winograd leaves direct, small: a first 7x7 convolution of
    stride 2 (3 -> 16 channels, 14x14 = 196 rows) with bias and ReLU, a 3x3 one of stride 2
    (16 -> 32, 7x7 = 49 rows), then a 3x3 one of stride 1 (Winograd's: not padded)."""
    init = functools.partial(onnx_models.uniform_initializer, np.random.default_rng(seed))
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[3, 3, 3, 3], strides=[2, 2]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
            helper.make_node("Relu", ["c2"], ["r2"]),
            helper.make_node("Conv", ["r2", "w3"], ["y"], pads=[1, 1, 1, 1]),
        ],
        "strided_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 7, 7])],
        [init("w1", (16, 3, 7, 7)), init("b1", (16,)), init("w2", (32, 16, 3, 3)), init("b2", (32,)),
         init("w3", (32, 32, 3, 3))],
    )
    return helper.make_model(graph, opset_imports=onnx_models.OPSET)


def test_strided_convolutions_are_padded_and_winograds_are_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_model(str(onnx_models.save(_strided_block(), tmp_path / "m.onnx")), {})
    with tvm.transform.PassContext(opt_level=3):
        module = channels_last(import_onnx(loaded))
        assert row_padding.rewrite(module, AVX2_ISA)[1] == 2
        # Larger kernels only up to MAX_KERNEL: the 7x7 one is then left direct.
        monkeypatch.setattr(row_padding, "MAX_KERNEL", 3)
        assert row_padding.rewrite(module, AVX2_ISA)[1] == 1


def test_padded_strided_convolutions_match_ort_register_blocked_over_the_padded_rows(tmp_path: Path) -> None:
    loaded = load_model(str(onnx_models.save(_strided_block(), tmp_path / "m.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), AVX2)
    padded = _padded_kernels(fused)
    assert len(padded) == 2, list(padded)
    for name, text in padded.items():
        assert RULE_NAME in text, name
        assert "T.int64(198), T.int64(16)" in text or "T.int64(50), T.int64(32)" in text, text
        # The input's padding is a block of its own (if_then_else), not a predicate in the GEMM;
        # only the epilogue, which writes the real rows, has one.
        assert text.count("T.where(") == 1, text
    assert_matches_ort(loaded, fused, AVX2, tmp_path)
