"""Split-K for the GPU's fp16 convolutions with few output pixels and a long reduction.

resnet50's 7x7 layers are GEMMs of 49 rows: one or two row tiles, so a 3x3 512 -> 512
convolution had 8 to 16 thread blocks for an H200's 132 SMs, each walking all 4608 steps of
the reduction alone (114 us for one call, 2 TFLOP/s; the 7x7 layers were the largest kernels of
the tuned fp16 module). Here the reduction's input channels are cut into `splits` slices, each
a batch of the convolution's implicit GEMM (one more grid dimension for the tensor-core
tiling), the partial sums kept in fp32, and a second kernel sums the slices, which also takes the
convolution's epilogue (cast, bias, activation, residual) as FuseOps fuses it into the sum.

Only CUDA targets with tensor cores, after `graph.half_convs_channels_last` (NHWC data, OHWI
weights). The kernels differ from the plain convolution's, so their workloads do too: records of
the plain kernels never apply to these.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, te
from tvm.ir import IRModule
from tvm.topi.nn.pad import pad

from tuner.rewrite.relax_rewrites import count_kernels, nhwc_conv2d, rewrite_calls, static_shape

# Thread blocks a split should bring a convolution's grid to: about one wave on an H100/H200
# (132 SMs); fewer SMs only make a wave shorter.
TARGET_BLOCKS = 128
# An output tile's rows and columns as the tensor-core search tends to pick them (for the count
# of blocks before a split; the search still chooses its own tiles).
TILE = 64
# Reduction steps left to each slice: below this the partial sums' traffic and the second kernel
# cost more than the parallelism buys.
MIN_STEPS = 256
# The kernels' names, and FuseOps' pattern kOutEWiseFusable (tvm/relax/op_attr_types.h).
PARTIAL_KERNEL = "conv2d_split_k"
SUM_KERNEL = "split_k_sum"
OUT_ELEMWISE_FUSABLE = 4
# A slice's input channels stay whole tensor-core steps (16).
CHANNEL_STEP = 16


def splits_for(rows: int, out_channels: int, in_channels: int, kernel_elements: int) -> int:
    """How many slices the reduction of a convolution is cut into (1: left as it is). Only a
    grid of at most a quarter of `TARGET_BLOCKS` is split (a larger one fills the GPU well enough
    to not pay for the second kernel); then the largest power of two that keeps the grid within
    `TARGET_BLOCKS`, each slice at least `MIN_STEPS` reduction steps and a multiple of
    `CHANNEL_STEP` input channels."""
    blocks = math.ceil(rows / TILE) * math.ceil(out_channels / TILE)
    splits = 1
    if blocks * 4 > TARGET_BLOCKS:
        return splits
    while True:
        more = splits * 2
        if (blocks * more > TARGET_BLOCKS or in_channels % more or (in_channels // more) % CHANNEL_STEP
                or kernel_elements * in_channels // more < MIN_STEPS):
            return splits
        splits = more


def partial_conv2d(data: te.Tensor, weight: te.Tensor, strides: tuple[int, int],
                   padding: tuple[int, int, int, int], splits: int, out_dtype: str) -> te.Tensor:
    """(splits, N, OH, OW, O): slice `s` is the convolution over input channels
    [s * I / splits, (s + 1) * I / splits) of NHWC `data` and OHWI `weight`, in `out_dtype`."""
    n, h, w, ci = (int(d) for d in data.shape)
    co, kh, kw, _ = (int(d) for d in weight.shape)
    (sh, sw), (pt, pl, pb, pr) = strides, padding
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    if any(padding):
        data = pad(data, (0, pt, pl, 0), (0, pb, pr, 0), name="data_pad")
    per = ci // splits
    ry, rx, rc = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx"), te.reduce_axis((0, per), "rc")
    return te.compute(
        (splits, n, oh, ow, co),
        lambda s, b, y, x, k: te.sum(
            data[b, y * sh + ry, x * sw + rx, s * per + rc].astype(out_dtype)
            * weight[k, ry, rx, s * per + rc].astype(out_dtype), axis=[ry, rx, rc]),
        name=PARTIAL_KERNEL)


def sum_slices(partial: te.Tensor) -> te.Tensor:
    """The sum over the slices of `partial_conv2d`: the convolution's result."""
    slices = te.reduce_axis((0, int(partial.shape[0])), "slice")
    return te.compute(tuple(partial.shape[1:]), lambda *i: te.sum(partial[(slices, *i)], axis=slices),
                      name=SUM_KERNEL)


def _plan(call: relax.Call) -> int:
    """The slices for an fp16 NHWC convolution `call` (groups 1, no dilation, static shapes);
    1 for any other call or one that a split does not pay for."""
    if not nhwc_conv2d(call):
        return 1
    attrs = call.attrs
    if int(attrs.groups) != 1 or [int(d) for d in attrs.dilation] != [1, 1]:
        return 1
    data, weight = call.args
    shape, wshape, out = static_shape(data), static_shape(weight), static_shape(call)
    if shape is None or wshape is None or out is None or str(data.ty.dtype) != "float16":
        return 1
    rows = out[0] * out[1] * out[2]
    return splits_for(rows, wshape[0], wshape[3], wshape[1] * wshape[2])


def _as_split_k(builder: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    splits = _plan(call)
    if splits == 1:
        return None
    data, weight = call.args
    attrs = call.attrs
    out_dtype = str(call.ty.dtype)
    partial = builder.emit(builder.call_te(
        partial_conv2d, data, weight, tuple(int(s) for s in attrs.strides),
        tuple(int(p) for p in attrs.padding), splits, out_dtype, primfunc_name_hint=PARTIAL_KERNEL))
    return builder.call_te(sum_slices, partial, primfunc_name_hint=SUM_KERNEL)


def rewrite(mod: IRModule) -> tuple[IRModule, int]:
    """`mod` with its fp16 convolutions that gain from it split along their reduction, and how
    many there were.

    The sums are marked as FuseOps' "output-elementwise fusable" pattern, as a convolution is:
    as a plain reduction (what AnnotateTIROpPattern infers) nothing after it is fused into it,
    and the epilogue (cast, bias, ReLU) ran as one more kernel per convolution."""
    mod, count = rewrite_calls(mod, _as_split_k)
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tvm.tirx.PrimFunc) and gv.name_hint.startswith(SUM_KERNEL):
            mod[gv] = func.with_attr("op_pattern", OUT_ELEMWISE_FUSABLE)
    return mod, count


@tvm.transform.module_pass(opt_level=0, name="tuner.SplitK")
def split_k_convolutions(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
    """The module pass of `rewrite` (tensor-core GPUs, after `half_convs_channels_last`)."""
    return rewrite(mod)[0]


def kernels(mod: IRModule) -> int:
    """How many kernels of a fused module compute split-K partial convolutions (for the report)."""
    return count_kernels(mod, PARTIAL_KERNEL)
