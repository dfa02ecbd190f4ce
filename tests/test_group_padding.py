"""Grouped convolutions padded to whole vectors per group on CPU: which ones are padded, that the
padded module computes what ONNX Runtime computes (1x1 and strided 3x3 groups, with bias,
activation and a residual after), and that the padded convolution is register-blocked on full
8-lane vectors."""

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
from tuner.rewrite import group_padding, row_padding
from tuner.compile import schedule_module
from tuner.rewrite.graph import channels_last, fuse_for_tuning, import_onnx
from tuner.load.model_io import load_model
from tuner.schedules.isa import vector_isa
from tuner.schedules.register_blocking import RULE_NAME

AVX2 = Target({"kind": "llvm", "mcpu": "znver2", "num-cores": 2})
AVX512 = Target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2})
# AVX-512's vectors and registers: the padding decisions for it, compiled (and run) as AVX2 code.
AVX512_ISA = vector_isa(AVX512)


@pytest.mark.parametrize("per_group,padded", [(34, 40), (68, 72), (28, 32), (64, None), (4, None), (3, None)])
def test_groups_are_padded_to_whole_vectors_unless_that_wastes_too_much(per_group: int, padded: int | None) -> None:
    assert group_padding.padded_channels(per_group) == padded


@pytest.mark.parametrize("per_group,padded", [(68, 80), (34, 40), (28, 32), (72, 80), (64, None), (24, None)])
def test_with_16_lanes_groups_are_padded_to_whole_16_lane_vectors_else_8_lane_ones(per_group: int, padded: int | None) -> None:
    assert group_padding.padded_channels(per_group, 16) == padded


def test_the_pass_pads_to_the_current_targets_vector_width() -> None:
    assert group_padding.target_isa().lanes == 8
    with AVX512:
        assert group_padding.target_isa().lanes == 16
    with AVX2:
        assert group_padding.target_isa().lanes == 8


def test_the_padded_weight_keeps_each_groups_channels_first() -> None:
    w = np.arange(2 * 3 * 1 * 1 * 5, dtype=np.float32).reshape(6, 1, 1, 5)  # 2 groups of 3
    p = group_padding.pad_weight(w, 2, 8)
    assert p.shape == (16, 1, 1, 5)
    np.testing.assert_array_equal(p[0:3], w[0:3])
    np.testing.assert_array_equal(p[8:11], w[3:6])
    assert not p[3:8].any() and not p[11:16].any()


def _grouped_block(seed: int = 0, per_group: int = 34) -> onnx.ModelProto:
    """A 1x1 conv of 4 groups of 34 with bias and ReLU, a 3x3 stride-2 conv of 4 groups of 34
    with bias, then a 1x1 conv of 4 groups of 34 whose output is added to that conv's: the shapes
    of a ShuffleNet stage (`per_group`: other than 34)."""
    c = 4 * per_group
    init = functools.partial(onnx_models.uniform_initializer, np.random.default_rng(seed))

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], group=4),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], group=4, pads=[1, 1, 1, 1], strides=[2, 2]),
            helper.make_node("Conv", ["c2", "w3"], ["c3"], group=4),
            helper.make_node("Add", ["c3", "c2"], ["y"]),
        ],
        "grouped_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 9, 11])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 5, 6])],
        [init("w1", (c, per_group, 1, 1)), init("b1", (c,)), init("w2", (c, per_group, 3, 3)), init("b2", (c,)),
         init("w3", (c, per_group, 1, 1))],
    )
    return helper.make_model(graph, opset_imports=onnx_models.OPSET)


def test_every_grouped_conv_of_34_channels_is_padded(tmp_path: Path) -> None:
    loaded = load_model(str(onnx_models.save(_grouped_block(), tmp_path / "m.onnx")), {})
    with tvm.transform.PassContext(opt_level=3):
        assert group_padding.rewrite(channels_last(import_onnx(loaded)))[1] == 3


def test_the_padded_module_matches_ort_and_its_convs_are_register_blocked(tmp_path: Path) -> None:
    loaded = load_model(str(onnx_models.save(_grouped_block(), tmp_path / "m.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), AVX2)
    scheduled, _ = schedule_module(fused, AVX2, ms.database.MemoryDatabase())
    convs = [f.script() for gv, f in scheduled.functions.items()
             if isinstance(f, tirx.PrimFunc) and gv.name_hint.startswith(("conv2d", "fused_conv2d"))]
    assert len(convs) == 3
    # Each group's 40 output channels: whole 8-lane vectors in the register block.
    for text in convs:
        assert RULE_NAME in text and "T.vectorized(T.int64(8))" in text, text
    assert_matches_ort(loaded, fused, AVX2, tmp_path)


def test_a_module_padded_to_16_lane_groups_matches_ort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """68 per group as on AVX-512 (68 -> 80), compiled for this machine's AVX2 code: the
    padding is a graph rewrite, whatever vectors run it."""
    monkeypatch.setattr(group_padding, "target_isa", lambda: AVX512_ISA)
    loaded = load_model(str(onnx_models.save(_grouped_block(per_group=68), tmp_path / "m.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), AVX2)
    widths = {int(f.params[1].ty.shape[0]) for gv, f in fused.functions.items()
              if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint}
    assert widths == {4 * 80}
    assert_matches_ort(loaded, fused, AVX2, tmp_path)


@pytest.mark.parametrize("out_c,lanes,padded", [(1000, 16, 1008), (1000, 8, None), (24, 16, None), (40, 16, 48)])
def test_an_ungrouped_convolution_is_padded_as_one_group(out_c: int, lanes: int, padded: int | None) -> None:
    isa = AVX512_ISA if lanes == 16 else row_padding.DEFAULT_ISA
    assert group_padding.padded_ungrouped(out_c, isa=isa) == padded


@pytest.mark.parametrize("out_c,rows,pads_rows,padded", [
    (1000, 169, True, 1008),  # squeezenet's last: 125 vectors of 8 (7x1 blocks) -> 126 (6x2)
    (1000, 12, True, None),  # too few rows: memory-bound, the block does not matter
    (40, 99, True, None),  # 5 vectors -> 6 would waste 20%
    (256, 169, True, None),  # 32 vectors: 6x2 already
])
def test_on_avx2_whole_vectors_are_padded_further_where_a_better_register_block_pays(
        out_c: int, rows: int, pads_rows: bool, padded: int | None) -> None:
    assert group_padding.padded_ungrouped(out_c, rows, row_padding.DEFAULT_ISA, pads_rows) == padded


def _wide_1x1(out_c: int = 200, size: int = 13, seed: int = 0) -> onnx.ModelProto:
    """A 1x1 conv of 16 -> `out_c` channels with bias and ReLU (25 vectors of 8 at 200)."""
    init = functools.partial(onnx_models.uniform_initializer, np.random.default_rng(seed))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
        "wide_1x1",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_c, size, size])],
        [init("w", (out_c, 16, 1, 1)), init("b", (out_c,))],
    )
    return helper.make_model(graph, opset_imports=onnx_models.OPSET)


def test_a_1x1_convolution_padded_to_two_vector_blocks_on_avx2_matches_ort(tmp_path: Path) -> None:
    """200 channels at 13x13 rows: 208, register-blocked two vectors wide over padded rows, the
    padded channels sliced off in the same kernel."""
    loaded = load_model(str(onnx_models.save(_wide_1x1(), tmp_path / "m.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), AVX2)
    convs = {gv.name_hint: f for gv, f in fused.functions.items()
             if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint}
    assert len(convs) == 1 and "strided_slice" in next(iter(convs)), list(convs)
    assert {int(f.params[1].ty.shape[0]) for f in convs.values()} == {208}
    scheduled, _ = schedule_module(fused, AVX2, ms.database.MemoryDatabase())
    (text,) = [f.script() for gv, f in scheduled.functions.items()
               if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint]
    assert RULE_NAME in text and "T.vectorized(T.int64(16))" in text and "T.unroll(T.int64(6))" in text, text
    assert_matches_ort(loaded, fused, AVX2, tmp_path)


def _ungrouped_convs(seed: int = 0) -> onnx.ModelProto:
    """A 1x1 conv of 12 -> 40 channels with bias and ReLU, then a 3x3 conv of 40 -> 40 whose
    output is added to the first's: 40 channels are 2.5 vectors of 16 lanes."""
    init = functools.partial(onnx_models.uniform_initializer, np.random.default_rng(seed))

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["c2", "r1"], ["y"]),
        ],
        "ungrouped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 9, 11])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 40, 9, 11])],
        [init("w1", (40, 12, 1, 1)), init("b1", (40,)), init("w2", (40, 40, 3, 3))],
    )
    return helper.make_model(graph, opset_imports=onnx_models.OPSET)


def test_a_module_with_ungrouped_convolutions_padded_to_16_lanes_matches_ort(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """40 output channels padded to 48 as on AVX-512, compiled for AVX2 code; with 8 lanes
    (AVX2's own) 40 channels are whole vectors and nothing is padded."""
    loaded = load_model(str(onnx_models.save(_ungrouped_convs(), tmp_path / "m.onnx")), {})

    def conv_widths(fused: tvm.IRModule) -> set[int]:
        return {int(f.params[1].ty.shape[0]) for gv, f in fused.functions.items()
                if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint and "winograd" not in gv.name_hint}

    assert conv_widths(fuse_for_tuning(import_onnx(loaded), AVX2)) == {40}
    monkeypatch.setattr(group_padding, "target_isa", lambda: AVX512_ISA)
    fused = fuse_for_tuning(import_onnx(loaded), AVX2)
    assert conv_widths(fused) == {48}
    assert_matches_ort(loaded, fused, AVX2, tmp_path)
