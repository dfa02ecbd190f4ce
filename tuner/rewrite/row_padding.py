"""CPU: convolutions whose output rows divide only into poor register blocks, computed as a
GEMM over a few rows more, inside their own kernel.

Channels last, a 1x1 convolution is a GEMM whose rows are the output's H*W pixels, and the
micro-kernel rule (schedules/register_blocking.py) blocks the rows by a divisor of their number:
resnet50's 14x14 layers (196 rows) allow 4x2 on AVX2, not 6x2, and its 7x7 ones (49) only 7x1;
squeezenet's 13x13 layers (169) only 13x1. Timed alone by turns (`bench/sweep_blocks.py
--mcpu znver3`, AMD EPYC znver4 running AVX2 code): 256 -> 1024 channels at 14x14 ran 4x2 at 63%
of the FMA peak, 6x2 over 198 rows at 76% of it in useful work; 2048 -> 512 at 7x7 7x1 at 47%,
6x2 over 54 rows at 64%.

So such a convolution becomes one kernel (`padded_rows_conv`) whose GEMM iterates over the
padded row count, reading input row ``min(r, last)`` (the padded rows recompute the last one:
no predicate in the reduction, which made LLVM keep a ragged block's accumulators in memory at
half the speed), followed by a copy of the real rows into the NHWC output, where Relax fuses
the bias, activation and residual as into any convolution. The register-blocked rule computes
that copy and the epilogue per register block (`register_blocking._row_positions`), so the
padded rows are never stored. The graph is not changed around the kernel (padding in the graph,
tried before, sliced and reshaped the output outside the convolution's kernel, which split
resnet50's epilogues off into kernels of their own: 1.6-1.8x slower defaults).

A larger kernel that Winograd leaves direct (stride 2, a first convolution of 3 channels) is the
same GEMM over its output pixels with the taps reduced along with the channels, reading the
padded input (a block before the GEMM, as TOPI's direct convolution has): resnet50's 7x7
convolution and its three 3x3 ones of stride 2 (784, 196 and 49 rows: 4x2, 4x2 and 7x1 on
AVX2), squeezenet's first (111x111 rows: 3x2). resnet50 tuned at 64 trials/task (AMD EPYC znver3), its
modules by turns 0.992-0.996x with them padded (the 7x7 stride-2 conv 2.42 -> 1.92 ms in situ); default
modules (`bench/defaults_ab.py --without row-padding-kxk`) resnet50 0.989x, squeezenet 0.962x.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx
from tvm.ir import IRModule
from tvm.topi.nn.pad import pad

from . import winograd
from .relax_rewrites import nhwc_conv2d, rewrite_calls, static_shape
from ..schedules.isa import DEFAULT_ISA, VectorISA, target_isa
from ..schedules.register_blocking import MicroKernel, efficiency, register_blocks

# The largest kernel (height or width) computed over padded rows: resnet50's first convolution's 7.
MAX_KERNEL = 7
# At most this many multiplications per useful one.
MAX_WASTE = 1.15
# Padding must gain this much on the modelled throughput of the rule's pick (below).
MIN_GAIN = 1.10
# Work per reduction step besides the FMAs (loop counter, pointer increments, the B panel's
# address), in FMA-equivalents. The FMA/load model of `efficiency` rates 4x2 and 6x2 alike on
# AVX2 (both hide the FMA latency); measured, 6x2 was 1.17x faster on 196 rows and 7x1 against
# 6x2 1.49x slower on 49: a fixed cost per step, amortized over more FMAs, accounts for it.
STEP_OVERHEAD = 4


def _throughput(kernel: MicroKernel, isa: VectorISA) -> float:
    fmas = kernel.mr * kernel.nv
    return efficiency(kernel, isa) * fmas / (fmas + STEP_OVERHEAD)


def useful_throughput(rows: int, padded: int, channels: int, isa: VectorISA) -> float:
    """The modelled throughput of the rule's pick over `padded` rows, in useful work."""
    kernels, narrowed = register_blocks(padded, channels, isa)
    return _throughput(kernels[0], narrowed) * rows / padded if kernels else 0.0


def padded_rows(rows: int, channels: int, isa: VectorISA) -> int | None:
    """The row count to compute a `rows` x `channels` GEMM over, or None to keep its own: the
    padding (at most MAX_WASTE) whose register block runs best in useful work, if it beats the
    unpadded pick by MIN_GAIN. 196 rows on AVX2 -> 198 (6x2), 49 -> 54, 169 -> 174; on AVX-512
    (32 registers) 196 and 49 keep 7x2, 169 (13x1) -> 171 (9x2)."""
    base = useful_throughput(rows, rows, channels, isa)
    best, best_rows = base, None
    for padded in range(rows + 1, int(rows * MAX_WASTE) + 1):
        if (score := useful_throughput(rows, padded, channels, isa)) > best:
            best, best_rows = score, padded
    return best_rows if best_rows is not None and best >= base * MIN_GAIN else None


def padded_rows_conv(data: te.Tensor, weight: te.Tensor, rows: int, strides: tuple[int, int],
                     padding: tuple[int, int, int, int] = (0, 0, 0, 0)) -> te.Tensor:
    """The NHWC output of a convolution (OHWI weights, `padding` top, left, bottom, right)
    computed as a GEMM over `rows` output pixels, the last real one repeated, and copied back to
    N x H x W x O. A 1x1 convolution without padding reads its input in place; a larger kernel
    reads it padded (a block the rule computes before the GEMM), its taps reduced with the
    channels."""
    _, h, w, channels = (int(d) for d in data.shape)
    out_c, kh, kw, _ = (int(d) for d in weight.shape)
    top, left, bottom, right = padding
    sh, sw = strides
    out_h, out_w = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
    last = out_h * out_w - 1
    rc = te.reduce_axis((0, channels), name="rc")

    def pixel(r: tirx.PrimExpr) -> tuple[tirx.PrimExpr, tirx.PrimExpr]:
        clamped = tirx.Min(r, last)
        return clamped // out_w * sh, clamped % out_w * sw

    if (kh, kw) == (1, 1) and not any(padding):
        # Kept as first written, so that records tuned for 1x1 convolutions still match.
        gemm = te.compute(
            (int(data.shape[0]), rows, out_c),
            lambda b, r, k: te.sum(data[b, pixel(r)[0], pixel(r)[1], rc] * weight[k, 0, 0, rc], axis=[rc]),
            name="conv_rows")
    else:
        padded = pad(data, [0, top, left, 0], [0, bottom, right, 0], name="pad_temp") if any(padding) else data
        ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
        gemm = te.compute(
            (int(data.shape[0]), rows, out_c),
            lambda b, r, k: te.sum(padded[b, pixel(r)[0] + ry, pixel(r)[1] + rx, rc] * weight[k, ry, rx, rc],
                                   axis=[ry, rx, rc]),
            name="conv_rows")
    return te.compute((int(data.shape[0]), out_h, out_w, out_c),
                      lambda b, y, x, k: gemm[b, y * out_w + x, k], name="conv2d_nhwc")


def gemm_rows(call: relax.Call, isa: VectorISA = DEFAULT_ISA) -> int | None:
    """The output pixels (rows) of a convolution this rewrite may compute over padded rows: a
    float32 NHWC/OHWI, ungrouped, undilated one with constant weights and a kernel of at most
    MAX_KERNEL, which `winograd` does not take on `isa`; None for any other call."""
    if not nhwc_conv2d(call):
        return None
    attrs = call.attrs
    if int(attrs.groups) != 1 or any(int(d) != 1 for d in attrs.dilation):
        return None
    if str(attrs.out_dtype) not in ("", "None", "float32", "void"):
        return None
    data, weight = call.args
    shape, kernel, out = static_shape(data), static_shape(weight), static_shape(call)
    if shape is None or kernel is None or out is None or len(shape) != 4 or data.ty.dtype != "float32":
        return None
    if not isinstance(weight, tvm.ir.expr.GenericConst) or str(weight.value.dtype) != "float32":
        return None
    if max(kernel[1:3]) > MAX_KERNEL or (kernel[1:3] != [1, 1] and winograd.eligible(call, isa=isa)):
        return None
    return out[1] * out[2]


def _eligible(call: relax.Call, isa: VectorISA) -> int | None:
    """The padded rows for a `gemm_rows` convolution whose rows are worth padding."""
    if (rows := gemm_rows(call, isa)) is None:
        return None
    return padded_rows(rows, int(call.args[1].value.shape[0]), isa)


def _padded(builder: relax.BlockBuilder, call: relax.Call, isa: VectorISA) -> relax.Expr | None:
    """The padded-rows kernel standing for an eligible `call`."""
    if (padded := _eligible(call, isa)) is None:
        return None
    data, weight = call.args
    strides = tuple(int(s) for s in call.attrs.strides)
    padding = tuple(int(p) for p in call.attrs.padding)
    return builder.call_te(padded_rows_conv, data, weight, padded, strides, padding,
                           primfunc_name_hint="conv2d_padded_rows")


def rewrite(mod: IRModule, isa: VectorISA = DEFAULT_ISA) -> tuple[IRModule, int]:
    """`mod` with its eligible 1x1 convolutions computed over padded rows for `isa`, and how many
    there were. Constants are folded first, so weights that ConvertLayout transposed are
    constants again."""
    return rewrite_calls(relax.transform.FoldConstant()(mod), lambda b, c: _padded(b, c, isa))


@tvm.transform.module_pass(opt_level=0, name="tuner.PadRows")
def pad_rows(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
    """The module pass of `rewrite` for the current target (CPU only: it runs after
    `graph.channels_last` and `group_padding`)."""
    return rewrite(mod, target_isa())[0]
