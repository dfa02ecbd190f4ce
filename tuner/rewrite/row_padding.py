"""CPU: 1x1 convolutions whose output rows allow no register block of 4 to 8 rows, computed on a
few zero rows more and sliced back.

Channels last, a 1x1 convolution is a GEMM whose rows are the output's H*W pixels, and the
micro-kernel rule (schedules/register_blocking.py) blocks rows by a divisor of H*W. squeezenet's
13x13 layers (169 rows) divide only into 1 and 13: their 13-row blocks (15 of AVX2's 16 vector
registers) ran at 44-47% of the FMA peak, where the same convolution on 14x14 rows runs 7-row
blocks at 70% (`bench/sweep_blocks.py 512,13,1,1000 512,14,1,1000`, AMD EPYC znver3). One zero
row of input (13x13 -> 14x13: 182 rows, 7 per block) costs 8% more multiplications; the extra
output row is sliced off in the kernel that takes the result. squeezenet with default
schedules: 13.45 -> 10.91 ms (9 convolutions padded, the same output to the bit).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir import IRModule

from .relax_rewrites import nhwc_conv2d, rewrite_calls, static_shape

# Register blocks of this many rows suit the micro-kernel on AVX2 and AVX-512.
GOOD_ROWS = range(4, 9)
# At most this many multiplications per useful one.
MAX_WASTE = 1.15


def _has_good_block(rows: int) -> bool:
    return any(rows % r == 0 for r in GOOD_ROWS)


def padded_height(height: int, width: int) -> int | None:
    """The fewest rows of height to add so that height x width rows divide into 4 to 8-row
    blocks; None when they already do or when padding would waste more than MAX_WASTE."""
    if _has_good_block(height * width):
        return None
    for extra in range(1, height):
        if (height + extra) > MAX_WASTE * height:
            return None
        if _has_good_block((height + extra) * width):
            return extra
    return None


def _eligible(call: relax.Call) -> int | None:
    """Rows of height to pad for a float32 NHWC/OHWI 1x1, stride-1, unpadded, ungrouped
    convolution, None for any other call."""
    if not nhwc_conv2d(call):
        return None
    attrs = call.attrs
    if int(attrs.groups) != 1 or any(int(s) != 1 for s in attrs.strides) or any(int(p) for p in attrs.padding):
        return None
    data, weight = call.args
    shape, kernel = static_shape(data), static_shape(weight)
    if shape is None or kernel is None or len(shape) != 4 or kernel[1:3] != [1, 1] or data.ty.dtype != "float32":
        return None
    return padded_height(shape[1], shape[2])


def _padded(builder: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """The row-padded convolution sliced back, for an eligible `call`."""
    if (extra := _eligible(call)) is None:
        return None
    data, weight = call.args
    height = static_shape(data)[1]
    padded = builder.emit(relax.op.nn.pad(data, [0, 0, 0, extra, 0, 0, 0, 0]))
    conv = builder.emit(relax.Call(call.op, [padded, weight], call.attrs, call.ty_args))
    return relax.op.strided_slice(conv, axes=[1], begin=[0], end=[height])


def rewrite(mod: IRModule) -> tuple[IRModule, int]:
    """`mod` with its eligible 1x1 convolutions row-padded, and how many there were."""
    return rewrite_calls(mod, _padded)


@tvm.transform.module_pass(opt_level=0, name="tuner.PadRows")
def pad_rows(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
    """The module pass of `rewrite` (CPU only: it runs after `graph.channels_last`)."""
    return rewrite(mod)[0]
