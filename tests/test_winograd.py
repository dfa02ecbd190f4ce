"""Winograd F(4x4, 3x3) convolutions on CPU: which convolutions the rewrite takes, that the kernel
computes what the direct convolution computes (any size, any padding), and that its default
schedule is parallel, vectorized and has its weights transformed and packed at compile time."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import te, tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tests import onnx_models
from tests.compiled import assert_matches_ort
from tuner.rewrite import winograd
from tuner.compile import schedule_module
from tuner.rewrite.graph import fuse_for_tuning, import_onnx
from tuner.load.model_io import load_model
from tuner.schedules import register_blocking
from tuner.schedules.register_blocking import RULE_NAME
from tuner.schedules.space import space_generator

AVX2 = Target({"kind": "llvm", "mcpu": "znver2", "num-cores": 2})


def _direct_nhwc(x: np.ndarray, w_ohwi: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
    top, left, bottom, right = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h, out_w = xp.shape[1] - 2, xp.shape[2] - 2
    out = np.zeros((x.shape[0], out_h, out_w, w_ohwi.shape[0]))
    for kh in range(3):
        for kw in range(3):
            out += np.einsum("nhwi,oi->nhwo", xp[:, kh:kh + out_h, kw:kw + out_w, :], w_ohwi[:, kh, kw, :])
    return out


@pytest.mark.parametrize("size,pads", [(8, (1, 1, 1, 1)), (13, (1, 1, 1, 1)), (7, (0, 0, 0, 0)), (9, (1, 0, 2, 1))])
def test_the_winograd_kernel_computes_the_direct_convolution(size: int, pads: tuple[int, int, int, int]) -> None:
    """Output sizes that are no multiple of the 4x4 tile (13, 5, 10x8) and uneven padding."""
    rng = np.random.default_rng(size)
    x = rng.uniform(-1, 1, (1, size, size, 16)).astype(np.float32)
    w = rng.uniform(-1, 1, (24, 3, 3, 16)).astype(np.float32)
    packed = winograd.transform_weight(w)
    data_t = te.placeholder(x.shape, name="x")
    packed_t = te.placeholder(packed.shape, name="u")
    out_t = winograd.conv2d_nhwc(data_t, packed_t, pads)
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([data_t, packed_t, out_t])}), target="llvm")
    want = _direct_nhwc(x, w, pads)
    got = tvm.runtime.tensor(np.zeros(want.shape, np.float32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(packed), got)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _mixed_convs(seed: int = 0) -> onnx.ModelProto:
    """One convolution Winograd takes (3x3, stride 1, 16 -> 24 channels) between three it must
    leave alone: 3 input channels, stride 2, 1x1."""
    rng = np.random.default_rng(seed)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.uniform(-0.3, 0.3, shape).astype(np.float32), name)

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c2"], ["r2"]),
            helper.make_node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2]),
            helper.make_node("Conv", ["c3", "w4"], ["y"]),
        ],
        "mixed_convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 11, 11])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
        [init("w1", (16, 3, 3, 3)), init("b1", (16,)), init("w2", (24, 16, 3, 3)), init("b2", (24,)),
         init("w3", (24, 24, 3, 3)), init("w4", (8, 24, 1, 1))],
    )
    return helper.make_model(graph, opset_imports=onnx_models.OPSET)


def test_only_stride_one_3x3_convolutions_with_enough_channels_become_winograd(tmp_path: Path) -> None:
    model = load_model(str(onnx_models.save(_mixed_convs(), tmp_path / "m.onnx")), {})
    assert winograd.kernels(fuse_for_tuning(import_onnx(model), AVX2)) == 1
    assert winograd.kernels(fuse_for_tuning(import_onnx(model), AVX2, winograd=False)) == 0
    cuda = Target({"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm"}})
    assert winograd.kernels(fuse_for_tuning(import_onnx(model), cuda)) == 0


def test_few_output_tiles_stay_direct_where_avx512_multiplies_at_full_rate(tmp_path: Path) -> None:
    """A 7x7 output is 2x2 tiles: too few to pay for 4x the weights on Zen 5 (resnet50's 7x7
    layers), still worth 3x fewer multiply-adds on an AVX2 core or Zen 4; 11x11 (3x3 tiles) is
    Winograd everywhere."""
    def kernels(size: int, mcpu: str) -> int:
        model = onnx_models.grouped_conv(channels=16, groups=1, size=size, kernel=3)
        loaded = load_model(str(onnx_models.save(model, tmp_path / f"conv{size}.onnx")), {})
        return winograd.kernels(fuse_for_tuning(import_onnx(loaded), Target({"kind": "llvm", "mcpu": mcpu})))

    assert {mcpu: kernels(7, mcpu) for mcpu in ("znver2", "znver4", "znver5")} == {"znver2": 1, "znver4": 1, "znver5": 0}
    assert kernels(11, "znver5") == 1


def test_the_default_winograd_kernels_are_parallel_vectorized_prepacked_and_match_ort(tmp_path: Path) -> None:
    """Without their rules the transforms ran serial and scalar (the default 56x56x64 kernel took
    2.07 ms against 1.25 ms direct; with them 0.82 ms)."""
    loaded = load_model(str(onnx_models.save(_mixed_convs(), tmp_path / "m.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), AVX2)
    scheduled, _ = schedule_module(fused, AVX2, ms.database.MemoryDatabase())
    stages = {gv.name_hint: f.script() for gv, f in scheduled.functions.items()
              if isinstance(f, tirx.PrimFunc) and "winograd" in gv.name_hint}
    # Input transform, GEMM, output transform with the conv's epilogue: three kernels, each
    # parallel and vectorized over channels; the GEMM register-blocked.
    assert len(stages) == 3, list(stages)
    for text in stages.values():
        assert "T.parallel" in text and "T.vectorized" in text, text
    assert any(RULE_NAME in text and "bgemm_update" in text for text in stages.values())
    # The transformed weights are packed once, when compiling: no layout kernel at inference.
    assert not any("layout_rewrite_preproc" in f.script() for f in scheduled.functions.values()
                   if isinstance(f, tirx.PrimFunc))
    assert_matches_ort(loaded, fused, AVX2, tmp_path)


def test_only_the_winograd_gemm_has_decisions_to_search_and_every_space_passes_the_postprocessors(tmp_path: Path) -> None:
    loaded = load_model(str(onnx_models.save(_mixed_convs(), tmp_path / "m.onnx")), {})
    tasks = ms.relax_integration.extract_tasks(fuse_for_tuning(import_onnx(loaded), AVX2), AVX2)
    stages = [t for t in tasks if "winograd" in t.task_name]
    assert len(stages) == 3
    for task in stages:
        context = ms.TuneContext(mod=task.dispatched[0], target=AVX2, space_generator=space_generator(AVX2),
                                 search_strategy="replay-trace", task_name=task.task_name, num_threads=2)
        spaces = context.generate_design_space()
        assert spaces
        for sch in spaces:
            assert all(p.apply(sch) for p in context.space_generator.postprocs)
        decisions = any(any(i.kind.name == "SampleCategorical" for i in s.trace.insts) for s in spaces)
        # The register block of the 36 GEMMs is a sampled decision the search refines; the
        # transforms have one schedule, nothing for the search to spend trials on.
        assert decisions == ("gemm" in task.task_name), task.task_name


def test_a_winograd_gemm_whose_weights_dominate_sweeps_its_reduction_in_panels_and_matches_ort(tmp_path: Path) -> None:
    """resnet50's 7x7 layers: 4 tiles against 37.7 MB of weights, 2x faster per core in panels
    (`register_blocking.reduction_panel`). Here 7x7, 128 channels: 2 panels of 64."""
    model = onnx_models.grouped_conv(channels=128, groups=1, size=7, kernel=3)
    loaded = load_model(str(onnx_models.save(model, tmp_path / "conv7.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), AVX2)
    scheduled, _ = schedule_module(fused, AVX2, ms.database.MemoryDatabase())
    gemm = [f.script() for f in scheduled.functions.values()
            if isinstance(f, tirx.PrimFunc) and "bgemm_update" in f.script()]
    assert len(gemm) == 1
    # Threads take whole positions (36); the reduction runs in 2 panels, every vector block inside each.
    assert "T.parallel(T.int64(36))" in gemm[0], gemm[0]
    panels = rf"T.grid\(T.int64\(2\), T.int64\(\d+\), T.int64\(1\), T.int64\({register_blocking.PANEL}\)\)"
    assert re.search(panels, gemm[0]), gemm[0]
    assert_matches_ort(loaded, fused, AVX2, tmp_path)


def test_reduction_panels_only_where_weights_dominate_and_the_reduction_divides() -> None:
    assert register_blocking.reduction_panel(True, [512]) == 64
    assert register_blocking.reduction_panel(False, [512]) is None
    assert register_blocking.reduction_panel(True, [64]) is None
    assert register_blocking.reduction_panel(True, [96]) is None
    assert register_blocking.reduction_panel(True, [512, 3]) is None
