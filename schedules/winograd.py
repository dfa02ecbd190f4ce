"""Schedule rules for the transforms of a Winograd convolution on CPU (`tuner/rewrite/winograd.py`).

The input transform (``data_pack``) and the output transform (``inverse``, then the gather into
NHWC with the convolution's epilogue) are kernels of their own beside the 36 GEMMs (``bgemm``,
the register-blocked rule's, as any GEMM). Each 2-D transform is two 1-D passes whose
coefficients are written out: with the passes' loops unrolled, a vector of channels is
transformed at a time (NHWC: channels are contiguous) with only the non-zero terms. Nothing is
left to search there, so these rules make one schedule: the search spends its trials on the
GEMM.

TVM 0.27's own CPU rules for such blocks draw random splits and leave the channel loop scalar;
beside the register-blocked GEMM's kernel-wide annotation (which keeps MetaSchedule's
parallelize/vectorize postprocessor from re-fusing its loops) they ran serial: the default
Winograd kernel of a 56x56x64 convolution took 2.07 ms against 1.25 ms for the direct one.
"""

from __future__ import annotations

import functools

import tvm
from tvm import tirx
from tvm.s_tir.schedule import SBlockRV, Schedule, ScheduleError

from .register_blocking import ANNOTATION, RULE_NAME as BLOCKED, inline_blocks_after, register_annotation

DATA_PACK = "tuner.winograd_data_pack"
INVERSE = "tuner.winograd_inverse"
# The first 1-D pass of each transform: computed by its transform's rule, per tile.
STAGE = BLOCKED


def _lanes(extent: int) -> int:
    """The channel vector: 16 floats (one AVX-512 register, two AVX2 ones) where it divides."""
    return next(v for v in (16, 8, 4, 2, 1) if extent % v == 0)


def _inline_producers(sch: Schedule, block: SBlockRV) -> None:
    """Padding, tile gather and whatever elementwise work Relax fused before the transform (a
    layout transpose, a concatenation) computed where the block reads them."""
    pending = list(sch.get_producers(block))
    while pending:
        producer = pending.pop()
        if sch.get(producer).annotations.get(ANNOTATION, "None") != "None":
            continue
        grand = list(sch.get_producers(producer))
        try:
            sch.compute_inline(producer)
        except ScheduleError:
            continue
        pending.extend(grand)


def _transform(sch: Schedule, block: SBlockRV) -> None:
    """A 2-D transform's second pass, loops (i, j, tile, channel), and its first pass (the
    block's producer marked STAGE): parallel over (tile, channel vector); per iteration the
    first pass into a small local buffer, both passes' i and j unrolled (the coefficients fold
    into constants) and the channels one vector."""
    (first,) = [b for b in sch.get_producers(block) if sch.get(b).annotations.get(ANNOTATION) == STAGE]
    _inline_producers(sch, first)
    i, j, tile, chan = sch.get_loops(block)
    lanes = _lanes(int(sch.get(chan).extent))
    chan_o, chan_i = sch.split(chan, [None, lanes])
    sch.reorder(tile, chan_o, i, j, chan_i)
    outer = sch.fuse(tile, chan_o)
    sch.parallel(outer)
    sch.unroll(i)
    sch.unroll(j)
    sch.vectorize(chan_i)
    sch.compute_at(first, outer, preserve_unit_loops=True)
    sch.set_scope(first, 0, "local")
    fi, fj, _, fchan = sch.get_loops(first)[1:]
    sch.unroll(fi)
    sch.unroll(fj)
    sch.vectorize(fchan)
    sch.annotate(block, ANNOTATION, BLOCKED)
    # The whole kernel is scheduled by tuner's rules: MetaSchedule's parallelize/vectorize
    # postprocessor must not re-fuse these loops (as for the register-blocked GEMM).
    sch.annotate(sch.get_sblock("root"), ANNOTATION, BLOCKED)


def _output_stage(sch: Schedule, inverse: SBlockRV) -> None:
    """The gather into NHWC and its epilogue (bias, activation, residual) in one parallel,
    vectorized pass over the output."""
    for b in inline_blocks_after(sch, inverse):
        loops = sch.get_loops(b)
        if any(sch.get(lp).kind != tirx.ForKind.SERIAL for lp in loops) or len(loops) < 2:
            continue
        outer = sch.fuse(*loops[:-1])
        sch.parallel(outer)
        chan = loops[-1]
        _, chan_i = sch.split(chan, [None, _lanes(int(sch.get(chan).extent))])
        sch.vectorize(chan_i)
        sch.annotate(b, ANNOTATION, BLOCKED)


def data_pack_rule(sch: Schedule, block: SBlockRV) -> list[Schedule]:
    _transform(sch, block)
    return [sch]


def inverse_rule(sch: Schedule, block: SBlockRV) -> list[Schedule]:
    _output_stage(sch, block)
    _transform(sch, block)
    return [sch]


@functools.cache
def register_rules() -> None:
    """Name the two rules as MetaSchedule custom rules for CPU (once per process)."""
    register_annotation()
    for name, rule in ((DATA_PACK, data_pack_rule), (INVERSE, inverse_rule)):
        full = f"s_tir.meta_schedule.cpu.{name}"
        if tvm.get_global_func(full, allow_missing=True) is None:
            tvm.register_global_func(full, rule)
