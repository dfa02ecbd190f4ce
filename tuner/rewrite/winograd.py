"""Winograd F(4x4, 3x3) for the CPU's 3x3 convolutions: the same result for ~3x fewer
multiplications.

A 3x3, stride-1 convolution in NHWC becomes three kernels: the input cut into 6x6 tiles and
transformed (B^T d B), 36 independent GEMMs over the channels, and the inverse transform
(A^T M A) into 4x4 output tiles, which also takes the convolution's epilogue. The weights'
transform (G g G^T) runs here, once, in float64 on the constant weights, so inference never
repeats it. On resnet50 the 3x3 convolutions are about half of the FLOPs and already ran at
87-102% of the FMA peak as direct convolutions: fewer multiplications was the lever left (ONNX
Runtime runs the same net at about the same rate).

The transforms name their schedule rules (`schedules/winograd.py`) in `schedule_rule` block
annotations; the GEMM is the register-blocked rule's (schedules/register_blocking.py) like any
other, its transformed weights layout-free.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.ir import IRModule
from tvm.topi.nn.pad import pad
from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

from tuner.rewrite.relax_rewrites import count_kernels, nhwc_conv2d, rewrite_calls, static_shape
from tuner.schedules.isa import DEFAULT_ISA, VectorISA, target_isa
from tuner.schedules import winograd as rules
from tuner.schedules.register_blocking import WINOGRAD_GEMM

TILE = 4
KERNEL = 3
# A first convolution (3 input channels) has GEMMs too thin to pay for the transforms; 16 -> 64
# channels at 55x55 (squeezenet's first expand) was still faster: 0.65 ms against 0.75 direct
# (default schedules).
MIN_CHANNELS = 16
# Output tiles per image below which a convolution stays direct. Every transformed weight takes
# part in one multiply-add per tile, and there are 4x as many of them as direct weights (36 per
# channel pair against 9): with few tiles the GEMM streams weights for little work. resnet50's
# 7x7 convolutions (2x2 tiles, 512 channels: 37.7 MB of transformed weights) ran their Winograd
# GEMM at 28% of the peak alone and 1.6x slower with the weights out of cache (znver5, default
# schedules), the 14x14 ones (4x4 tiles) at 83%. Where a core's multiply-adds are AVX2's (16 per
# cycle, AVX-512 at half rate included), Winograd's 3x fewer of them still pay at 2x2 tiles:
# resnet50 on default schedules was 4% slower with them direct (AVX2 code, same znver5), 4%
# faster on znver5's full-rate AVX-512.
MIN_TILES = 9


def transform_weight(weight_ohwi: np.ndarray, tile: int = TILE) -> np.ndarray:
    """G g G^T of every (output, input) channel pair: (alpha, alpha, O, I), float32."""
    _, _, g = _matrices(tile)
    packed = np.einsum("ak,okli,bl->aboi", g, weight_ohwi.astype(np.float64), g)
    return packed.astype(np.float32)


def _matrices(tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cook-Toom's A (alpha x m), B (alpha x alpha) and G (alpha x 3), as topi computes them."""
    return _cook_toom_convolution(_interpolation_points(tile + KERNEL - 2), tile, KERNEL)


def _times(matrix: np.ndarray, index: tirx.PrimExpr, load: Callable[[int], tirx.PrimExpr],
           dtype: str) -> tirx.PrimExpr:
    """``sum_k matrix[k, index] * load(k)`` with the coefficients written out and the zero
    terms left out: one sum per value of `index`, chosen by a select. Once the schedule unrolls
    `index` the select is gone and only the sum of the non-zero terms is left.

    Written as a reduction over a constant matrix (as topi does) the unrolled kernel carried
    36-deep select chains that took TVM and LLVM 8 s to compile per candidate (0.09 s for a
    direct convolution), so tuning a Winograd task took 3x as long as the direct one."""
    sums = []
    for j in range(matrix.shape[1]):
        terms = [load(k) if matrix[k, j] == 1 else load(k) * tirx.const(float(matrix[k, j]), dtype)
                 for k in range(matrix.shape[0]) if matrix[k, j] != 0]
        sums.append(functools.reduce(operator.add, terms) if terms else tirx.const(0.0, dtype))
    expr = sums[-1]
    for j in reversed(range(len(sums) - 1)):
        expr = tirx.Select(index == j, sums[j], expr)
    return expr


@dataclass(frozen=True)
class _Tiling:
    """How an (N, H, W) input with its padding is cut into overlapping alpha x alpha tiles."""
    batch: int
    out_h: int
    out_w: int
    tiles_h: int
    tiles_w: int
    tile: int

    @property
    def tiles(self) -> int:
        return self.batch * self.tiles_h * self.tiles_w


def _tiling(shape: tuple[int, ...], padding: tuple[int, int, int, int], tile: int) -> _Tiling:
    n, h, w = shape[:3]
    out_h, out_w = h + padding[0] + padding[2] - KERNEL + 1, w + padding[1] + padding[3] - KERNEL + 1
    return _Tiling(n, out_h, out_w, (out_h + tile - 1) // tile, (out_w + tile - 1) // tile, tile)


def input_transform(data: te.Tensor, padding: tuple[int, int, int, int], tile: int = TILE) -> te.Tensor:
    """B^T d B of every alpha x alpha input tile: (alpha, alpha, tiles, channels).

    Each 2-D transform is two 1-D ones (columns, then rows: 2 x 6 x 6 x 6 multiply-adds before
    the zeros are dropped instead of 6^4)."""
    n, h, w, ci = (int(d) for d in data.shape)
    t = _tiling((n, h, w), padding, tile)
    alpha, m, dtype = tile + KERNEL - 1, tile, str(data.dtype)
    b_mat = _matrices(tile)[1]
    pad_t, pad_l, pad_b, pad_r = padding
    extra_h = (t.tiles_h - 1) * m + alpha - (h + pad_t + pad_b)
    extra_w = (t.tiles_w - 1) * m + alpha - (w + pad_l + pad_r)
    inline = {"schedule_rule": "None"}  # computed where they are read (schedules/winograd.py)
    data_pad = pad(data, (0, pad_t, pad_l, 0), (0, pad_b + extra_h, pad_r + extra_w, 0), name="data_pad",
                   attrs=inline)
    per_image = t.tiles_h * t.tiles_w
    input_tile = te.compute(
        (alpha, alpha, t.tiles, ci),
        lambda eps, nu, p, c: data_pad[p // per_image, ((p // t.tiles_w) % t.tiles_h) * m + eps,
                                       (p % t.tiles_w) * m + nu, c],
        name="input_tile", attrs=inline)
    data_rows = te.compute(
        (alpha, alpha, t.tiles, ci),
        lambda eps, col, p, c: _times(b_mat, eps, lambda k: input_tile[k, col, p, c], dtype),
        name="data_pack_rows", attrs={"schedule_rule": rules.STAGE})
    return te.compute(
        (alpha, alpha, t.tiles, ci),
        lambda eps, nu, p, c: _times(b_mat, nu, lambda k: data_rows[eps, k, p, c], dtype),
        name="data_pack", attrs={"schedule_rule": rules.DATA_PACK})


def batched_gemm(data_pack: te.Tensor, packed: te.Tensor) -> te.Tensor:
    """The 36 GEMMs: (alpha, alpha, tiles, out channels), the transformed weights layout-free."""
    alpha, _, tiles, ci = (int(d) for d in data_pack.shape)
    co = int(packed.shape[2])
    rc = te.reduce_axis((0, ci), name="rc")
    return te.compute(
        (alpha, alpha, tiles, co),
        lambda eps, nu, p, k: te.sum(data_pack[eps, nu, p, rc] * packed[eps, nu, k, rc], axis=[rc]),
        name=WINOGRAD_GEMM, attrs={"layout_free_placeholders": [packed]})


def output_transform(bgemm: te.Tensor, shape: tuple[int, ...], padding: tuple[int, int, int, int],
                     tile: int = TILE) -> te.Tensor:
    """A^T M A of every tile, gathered into the NHWC output of an input of `shape`."""
    t = _tiling(shape, padding, tile)
    m, co, dtype = tile, int(bgemm.shape[3]), str(bgemm.dtype)
    a_mat = _matrices(tile)[0]
    alpha = tile + KERNEL - 1
    inverse_rows = te.compute(
        (m, alpha, t.tiles, co),
        lambda vh, col, p, k: _times(a_mat, vh, lambda j: bgemm[j, col, p, k], dtype),
        name="inverse_rows", attrs={"schedule_rule": rules.STAGE})
    inverse = te.compute(
        (m, m, t.tiles, co),
        lambda vh, vw, p, k: _times(a_mat, vw, lambda j: inverse_rows[vh, j, p, k], dtype),
        name="inverse", attrs={"schedule_rule": rules.INVERSE})
    per_image = t.tiles_h * t.tiles_w
    return te.compute(
        (t.batch, t.out_h, t.out_w, co),
        lambda b, y, x, k: inverse[y % m, x % m, b * per_image + (y // m) * t.tiles_w + x // m, k],
        name="conv2d_winograd")


def conv2d_nhwc(data: te.Tensor, packed: te.Tensor, padding: tuple[int, int, int, int],
                tile: int = TILE) -> te.Tensor:
    """The convolution of `data` (N, H, W, I) with weights transformed by `transform_weight`
    (alpha, alpha, O, I); padding (top, left, bottom, right). The pass emits its three stages as
    three kernels; this is them in one (tests).

    topi's `conv2d_winograd_nhwc` computes the same with one 2-D reduction per transform, and
    raises for pre-computed weights in TVM 0.27 ("LEGACY-FLOW")."""
    shape = tuple(int(d) for d in data.shape)
    return output_transform(batched_gemm(input_transform(data, padding, tile), packed), shape, padding, tile)


def enough_tiles(tiling: _Tiling, isa: VectorISA) -> bool:
    """Whether an image's output has tiles enough to pay for the transformed weights: any
    number on a core of AVX2's multiply-add rate, MIN_TILES on one of twice that."""
    return isa.fma_lanes <= 16 or tiling.tiles_h * tiling.tiles_w >= MIN_TILES


def eligible(call: relax.Call, min_channels: int = MIN_CHANNELS, isa: VectorISA = DEFAULT_ISA) -> bool:
    """A float32 NHWC/OHWI 3x3 convolution with stride 1, no dilation or groups, constant
    weights, at least `min_channels` input and output channels and, on `isa`, tiles enough."""
    if not nhwc_conv2d(call):
        return False
    attrs = call.attrs
    if [int(s) for s in attrs.strides] != [1, 1] or [int(d) for d in attrs.dilation] != [1, 1]:
        return False
    if int(attrs.groups) != 1 or str(attrs.out_dtype) not in ("", "None", "float32", "void"):
        return False
    data, weight = call.args
    if not isinstance(weight, tvm.ir.expr.GenericConst) or str(weight.value.dtype) != "float32":
        return False
    shape = static_shape(data)
    if shape is None or len(shape) != 4 or str(data.ty.dtype) != "float32":
        return False
    out_c, kh, kw, in_c = weight.value.shape
    if (kh, kw) != (KERNEL, KERNEL) or min(out_c, in_c) < min_channels:
        return False
    return enough_tiles(_tiling(tuple(shape), tuple(int(p) for p in attrs.padding), TILE), isa)


def _as_winograd(builder: relax.BlockBuilder, call: relax.Call, min_channels: int,
                 isa: VectorISA) -> relax.Expr | None:
    """The Winograd kernels standing for an eligible `call`, None for any other call."""
    if not eligible(call, min_channels, isa):
        return None
    data, weight = call.args
    packed = relax.const(transform_weight(weight.value.numpy()))
    padding = tuple(int(p) for p in call.attrs.padding)
    shape = tuple(static_shape(data))
    # Three kernels: the GEMM's search then lowers a plain batched GEMM (as one kernel with
    # its transforms, each candidate's lowering for the cost model took squeezenet's search
    # rounds from ~30 s to ~86 s); the transforms have one schedule each, nothing to search;
    # the output transform takes the convolution's epilogue (bias, activation, residual).
    tiles = builder.emit(builder.call_te(input_transform, data, padding, primfunc_name_hint="winograd_input"))
    products = builder.emit(builder.call_te(batched_gemm, tiles, packed, primfunc_name_hint="winograd_gemm"))
    return builder.call_te(output_transform, products, shape, padding, primfunc_name_hint="conv2d_winograd")


def rewrite(mod: IRModule, min_channels: int = MIN_CHANNELS,
            isa: VectorISA = DEFAULT_ISA) -> tuple[IRModule, int]:
    """`mod` with its convolutions eligible on `isa` as Winograd kernels, and how many there
    were. Constants are folded first, so weights that ConvertLayout transposed are constants again."""
    mod = relax.transform.FoldConstant()(mod)
    return rewrite_calls(mod, lambda builder, call: _as_winograd(builder, call, min_channels, isa))


@tvm.transform.module_pass(opt_level=0, name="tuner.Winograd")
def winograd_convolutions(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
    """The module pass of `rewrite` for the current target (CPU only: it runs after `channels_last`)."""
    return rewrite(mod, isa=target_isa())[0]


def kernels(mod: IRModule) -> int:
    """How many kernels of a fused module compute a Winograd convolution (for the report)."""
    return count_kernels(mod, "conv2d_winograd")
