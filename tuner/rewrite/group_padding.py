"""Convolutions whose groups (or, ungrouped, whose output channels) are no whole number of
vectors, padded to one.

The register-blocked rule (schedules/register_blocking.py) vectorizes a grouped convolution over
each group's output channels. ShuffleNet's groups of 68 channels fit 4-lane vectors only (half of
AVX2's width) and its groups of 34 no vector at all (stock schedules): those convolutions held
most of the tuned model's time at 13-20% of the FMA peak. Here each group's output channels are
padded with zero weights to a multiple of 8 lanes (68 -> 72, 34 -> 40) and the padding is sliced
off after the convolution, in the kernel that takes the convolution's bias and activation (and,
after the first convolution of a ShuffleNet unit, its channel shuffle). A 1x1 conv of 68 channels
per group at 14x14 ran 0.294 -> 0.134 ms (default schedules); shufflenet with `--trials 0`
went from 1.59-1.66x ONNX Runtime's latency to 1.04-1.18x (alternating runs, AMD EPYC znver3,
AVX2).

With AVX-512 a group is padded to whole 16-lane vectors where that wastes little (68 -> 80; 34
stays at 40, as 48 would be 41% waste): padded to 72, the 68-per-group convolution's micro-kernel
ran on 8-lane vectors, half the FMA width (default schedule 0.23 -> 0.12 ms, znver4).

An ungrouped convolution is one group: squeezenet's last (512 -> 1000 channels at 14x13 rows)
fits 8-lane vectors only, which on Intel's AVX-512 (two 512-bit FMA pipes) is half the FMA
width: 17-18% of the FMA peak against 58-61% padded to 1008 channels (`bench/sweep_blocks.py
512,14x13,1,1000 512,14x13,1,1008`, Intel Xeon, rocketlake, 2 cores).

An ungrouped convolution whose channels are whole vectors may still be padded a little further,
to a vector count that allows better register blocks: on AVX2, 1000 channels are 125 vectors of
8, so every block is one vector wide (7x1: a broadcast load per FMA); 1008 allows 6x2.
Squeezenet's last convolution over its padded rows ran at 75% of the FMA peak as 7x1 (175 rows)
and 82% as 6x2 (174 rows, 1008 channels): 1.09x in useful work (`bench/sweep_blocks.py --mcpu
znver3 512,25x7,1,1000 512,29x6,1,1008`, AMD EPYC znver4 running AVX2 code). The choice is
`row_padding`'s throughput model of the rule's pick, in useful work.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir import IRModule

from .relax_rewrites import nhwc_conv2d, rewrite_calls, static_shape
from .row_padding import MIN_GAIN, gemm_rows, padded_rows, useful_throughput
from ..schedules.isa import DEFAULT_ISA, VectorISA, target_isa

LANES = 8
# At most this many multiplications per useful one (34 -> 40 is 1.18).
MAX_WASTE = 1.25
# Whole vectors already, an ungrouped convolution's channels are padded for a better register
# block only this far (1000 -> 1008 is 1.008): the block must gain MIN_GAIN in useful work.
MAX_BLOCK_WASTE = 1.05
# Over fewer output pixels than this the GEMM reads each weight for a few rows only: it waits
# for memory, not for the register block (and padding adds weights to read).
MIN_BLOCK_ROWS = 16


def padded_channels(per_group: int, lanes: int = LANES) -> int | None:
    """A group's output channels padded to whole vectors of `lanes`, else of half as many (down
    to 8), or None when they already are a multiple of the widest that fits or every padding
    would waste more than MAX_WASTE."""
    while lanes >= LANES:
        padded = -(-per_group // lanes) * lanes
        if padded == per_group:
            return None
        if padded <= MAX_WASTE * per_group:
            return padded
        lanes //= 2
    return None


def padded_ungrouped(out_c: int, rows: int = 0, isa: VectorISA = DEFAULT_ISA, pads_rows: bool = False) -> int | None:
    """An ungrouped convolution's output channels padded as one group's to `isa`'s vectors
    (`padded_channels`), then to a multiple of 2 or 3 vectors where the register block that allows
    gains MIN_GAIN in useful work over `rows` output pixels (computed over `row_padding`'s padded
    rows where `pads_rows`): its own decision, so that a benchmark can turn it off alone
    (`bench/defaults_ab.py`)."""
    base = padded_channels(out_c, isa.lanes) or out_c
    wider = [c for c in dict.fromkeys(-(-base // (v * isa.lanes)) * v * isa.lanes for v in (2, 3))
             if base < c <= out_c * MAX_BLOCK_WASTE] if rows >= MIN_BLOCK_ROWS else []
    if not wider:  # most convolutions: no throughput to model (40 ms over 112x112 rows)
        return None if base == out_c else base

    def score(channels: int) -> float:
        over = (padded_rows(rows, channels, isa) if pads_rows else None) or rows
        return useful_throughput(rows, over, channels, isa) * out_c / channels

    best, best_score = base, score(base) * MIN_GAIN
    for channels in wider:
        if (found := score(channels)) > best_score:
            best, best_score = channels, found
    return None if best == out_c else best


def pad_weight(weight_ohwi: np.ndarray, groups: int, padded: int) -> np.ndarray:
    """OHWI weights with each group's output channels followed by zero ones up to `padded`."""
    out_c, kh, kw, in_c = weight_ohwi.shape
    per_group = out_c // groups
    out = np.zeros((groups, padded, kh, kw, in_c), weight_ohwi.dtype)
    out[:, :per_group] = weight_ohwi.reshape(groups, per_group, kh, kw, in_c)
    return out.reshape(groups * padded, kh, kw, in_c)


def _eligible(call: relax.Call, isa: VectorISA) -> int | None:
    """The padded group size for a float32 NHWC/OHWI convolution (ungrouped: one group; not
    depthwise) with constant weights, None for any other call."""
    if not nhwc_conv2d(call):
        return None
    groups = int(call.attrs.groups)
    weight = call.args[1]
    if not isinstance(weight, tvm.ir.expr.GenericConst) or str(weight.value.dtype) != "float32":
        return None
    out_c, _, _, in_c = weight.value.shape
    if (groups > 1 and in_c == 1) or out_c % groups:
        return None  # depthwise: one input channel per group, vectorized over the channels
    if groups > 1:
        return padded_channels(out_c // groups, isa.lanes)
    out_shape = static_shape(call)
    rows = out_shape[1] * out_shape[2] if out_shape is not None and len(out_shape) == 4 else 0
    return padded_ungrouped(out_c, rows, isa, pads_rows=gemm_rows(call, isa) is not None)


def _padded(builder: relax.BlockBuilder, call: relax.Call, isa: VectorISA) -> relax.Expr | None:
    """The group-padded convolution sliced back, for an eligible `call`."""
    if (padded := _eligible(call, isa)) is None:
        return None
    data, weight = call.args
    groups = int(call.attrs.groups)
    out_c = int(weight.value.shape[0])
    per_group = out_c // groups
    attrs = call.attrs
    conv = builder.emit(relax.op.nn.conv2d(
        data, relax.const(pad_weight(weight.value.numpy(), groups, padded)), strides=attrs.strides,
        padding=attrs.padding, dilation=attrs.dilation, groups=groups, data_layout="NHWC",
        kernel_layout="OHWI", out_layout="NHWC", out_dtype=attrs.out_dtype))
    if groups == 1:
        return relax.op.strided_slice(conv, axes=[3], begin=[0], end=[out_c])
    n, h, w, _ = (int(d) for d in conv.ty.shape.values)
    split = builder.emit(relax.op.reshape(conv, [n, h, w, groups, padded]))
    kept = builder.emit(relax.op.strided_slice(split, axes=[4], begin=[0], end=[per_group]))
    return relax.op.reshape(kept, [n, h, w, out_c])


def rewrite(mod: IRModule, isa: VectorISA = DEFAULT_ISA) -> tuple[IRModule, int]:
    """`mod` with its eligible convolutions padded to `isa`'s vectors (or narrower ones, see
    `padded_channels`; ungrouped ones also for its register blocks, see `padded_ungrouped`), and
    how many there were. Constants are folded first, so weights that ConvertLayout transposed
    are constants again."""
    return rewrite_calls(relax.transform.FoldConstant()(mod), lambda b, c: _padded(b, c, isa))


@tvm.transform.module_pass(opt_level=0, name="tuner.PadGroups")
def pad_groups(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
    """The module pass of `rewrite` for the current target's vectors (CPU only: it runs after
    `graph.channels_last`)."""
    return rewrite(mod, target_isa())[0]
