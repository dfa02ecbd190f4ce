"""CPU: 1x1 convolutions whose output rows divide only into poor register blocks, computed as a
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
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx
from tvm.ir import IRModule

from .relax_rewrites import nhwc_conv2d, rewrite_calls, static_shape
from ..schedules.isa import DEFAULT_ISA, VectorISA, target_isa
from ..schedules.register_blocking import MicroKernel, efficiency, register_blocks

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


def padded_rows_conv(data: te.Tensor, weight: te.Tensor, rows: int, stride: int) -> te.Tensor:
    """The NHWC output of a 1x1 convolution (OHWI weights, no padding) computed as a GEMM over
    `rows` output pixels, the last real one repeated, and copied back to N x H x W x O."""
    _, h, w, channels = (int(d) for d in data.shape)
    out_h, out_w = (h - 1) // stride + 1, (w - 1) // stride + 1
    last = out_h * out_w - 1
    rc = te.reduce_axis((0, channels), name="rc")

    def pixel(r: tirx.PrimExpr) -> tuple[tirx.PrimExpr, tirx.PrimExpr]:
        clamped = tirx.Min(r, last)
        return clamped // out_w * stride, clamped % out_w * stride

    gemm = te.compute(
        (int(data.shape[0]), rows, int(weight.shape[0])),
        lambda b, r, k: te.sum(data[b, pixel(r)[0], pixel(r)[1], rc] * weight[k, 0, 0, rc], axis=[rc]),
        name="conv_rows")
    return te.compute((int(data.shape[0]), out_h, out_w, int(weight.shape[0])),
                      lambda b, y, x, k: gemm[b, y * out_w + x, k], name="conv2d_nhwc")


def gemm_rows(call: relax.Call) -> tuple[int, int] | None:
    """(rows, stride) of a float32 NHWC/OHWI 1x1, unpadded, ungrouped convolution with constant
    weights (a GEMM over its output pixels, whose rows this rewrite may pad), None for any other
    call."""
    if not nhwc_conv2d(call):
        return None
    attrs = call.attrs
    strides = [int(s) for s in attrs.strides]
    if int(attrs.groups) != 1 or any(int(p) for p in attrs.padding) or any(int(d) != 1 for d in attrs.dilation):
        return None
    if strides[0] != strides[1] or str(attrs.out_dtype) not in ("", "None", "float32", "void"):
        return None
    data, weight = call.args
    shape, kernel = static_shape(data), static_shape(weight)
    if shape is None or kernel is None or len(shape) != 4 or kernel[1:3] != [1, 1] or data.ty.dtype != "float32":
        return None
    if not isinstance(weight, tvm.ir.expr.GenericConst) or str(weight.value.dtype) != "float32":
        return None
    stride = strides[0]
    return ((shape[1] - 1) // stride + 1) * ((shape[2] - 1) // stride + 1), stride


def _eligible(call: relax.Call, isa: VectorISA) -> tuple[int, int] | None:
    """(padded rows, stride) for a `gemm_rows` convolution whose rows are worth padding."""
    if (found := gemm_rows(call)) is None:
        return None
    rows, stride = found
    padded = padded_rows(rows, int(call.args[1].value.shape[0]), isa)
    return None if padded is None else (padded, stride)


def _padded(builder: relax.BlockBuilder, call: relax.Call, isa: VectorISA) -> relax.Expr | None:
    """The padded-rows kernel standing for an eligible `call`."""
    if (found := _eligible(call, isa)) is None:
        return None
    padded, stride = found
    data, weight = call.args
    return builder.call_te(padded_rows_conv, data, weight, padded, stride, primfunc_name_hint="conv2d_padded_rows")


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
