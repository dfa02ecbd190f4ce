"""Split-K fp16 convolutions on tensor-core GPUs (tuner/rewrite/split_k.py): which convolutions are split
and how far, that the sums take the convolutions' epilogues, that tensor-core tiling still
applies to the split kernel, and that the module computes what ONNX Runtime computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tests import onnx_models
from tests.compiled import assert_matches_ort
from tuner.rewrite import split_k
from tuner.rewrite.graph import fuse_for_tuning, import_onnx
from tuner.load.model_io import load_model
from tuner.schedules.space import space_generator

H100 = Target({"kind": "cuda", "arch": "sm_90", "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
               "thread_warp_size": 32, "host": {"kind": "llvm"}})


@pytest.mark.parametrize("rows,out_c,in_c,kernel,want", [
    (49, 512, 512, 9, 16),     # resnet50's 7x7 3x3 convolutions: 8 blocks -> 128
    (49, 512, 2048, 1, 8),     # 2048 -> 512 at 7x7: 2048 / 8 = 256 steps per slice
    (196, 256, 1024, 1, 4),    # 16 blocks, 1024 / 4 = 256 steps
    (3136, 64, 64, 9, 1),      # 56x56: 49 blocks already fill a quarter wave
    (49, 64, 24, 1, 1),        # a short reduction is never split
    (49, 512, 48, 9, 1),       # 48 / 2 = 24 channels: no whole tensor-core step
])
def test_splits_fill_the_gpu_without_slicing_the_reduction_too_thin(rows: int, out_c: int, in_c: int,
                                                                      kernel: int, want: int) -> None:
    assert split_k.splits_for(rows, out_c, in_c, kernel) == want


def _loaded(tmp_path: Path):  # noqa: ANN202
    model = onnx_models.conv_bn_residual(channels=256, size=7)
    return load_model(str(onnx_models.save(model, tmp_path / "m.onnx")))


def _kernels(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_split_convolutions_sum_their_slices_in_the_kernel_that_takes_their_epilogue(tmp_path: Path) -> None:
    fused = fuse_for_tuning(import_onnx(_loaded(tmp_path), "fp16"), H100)
    kernels = _kernels(fused)
    assert split_k.kernels(fused) == 1  # both convolutions have the same shapes: one kernel
    assert str(fused["main"]).count("R.call_tir(conv2d_split_k,") == 2
    assert not [k for k in kernels if k.startswith("fused_conv2d")], sorted(kernels)
    sums = sorted(k for k in kernels if split_k.SUM_KERNEL in k)
    # the first sum takes the bias and ReLU, the second the bias, the residual and ReLU
    assert len(sums) == 2 and all("relu" in k for k in sums) and any("add_add" in k for k in sums), sorted(kernels)
    # 256 channels, 3x3: 4 blocks of 64 x 64, 2304 steps -> 8 slices of 288, summed in fp32
    assert 'out_ty=R.Tensor((8, 1, 7, 7, 256), dtype="float32")' in str(fused["main"])


def test_fp32_and_cpu_convolutions_are_not_split(tmp_path: Path) -> None:
    assert split_k.kernels(fuse_for_tuning(import_onnx(_loaded(tmp_path), "fp32"), H100)) == 0
    cpu = Target({"kind": "llvm", "num-cores": 2})
    assert split_k.kernels(fuse_for_tuning(import_onnx(_loaded(tmp_path), "fp16"), cpu)) == 0


def test_the_split_kernel_is_still_tiled_for_tensor_cores(tmp_path: Path) -> None:
    """The slice is one more batch dimension of the implicit GEMM, which the tensor-core rule
    maps as it maps a batched matmul's."""
    fused = fuse_for_tuning(import_onnx(_loaded(tmp_path), "fp16"), H100)
    name = next(k for k in _kernels(fused) if k.startswith("conv2d_split_k"))
    mod = tvm.IRModule({"main": fused[name].with_attr("global_symbol", "main")})
    context = ms.TuneContext(mod=mod, target=H100, space_generator=space_generator(H100, mod), task_name=name,
                             rand_state=1)
    assert any("wmma" in str(space.mod) for space in context.generate_design_space())


def test_the_split_module_computes_what_onnxruntime_computes(tmp_path: Path) -> None:
    """Fused for the GPU, compiled for the CPU (the graph is what is under test here; the GPU
    kernels are checked on the GPU by tests/test_cuda.py)."""
    loaded = _loaded(tmp_path)
    fused = fuse_for_tuning(import_onnx(loaded, "fp16"), H100)
    assert split_k.kernels(fused) == 1
    assert_matches_ort(loaded, fused, Target({"kind": "llvm", "num-cores": 2}), tmp_path, rtol=2e-2, atol_of_max=2e-2)
