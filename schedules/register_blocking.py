"""Register-blocked micro-kernels for GEMM-like reductions on CPU (dense, matmul, conv2d).

MetaSchedule's stock CPU space (multi-level tiling with random tile sizes) left the matmuls of
a tuned transformer at 13-22% of this CPU's FMA peak, and four times the trials bought nothing.
What fast CPU kernels do instead (BLIS, oneDNN, and NeoCPU for TVM, USENIX ATC 2019) is a
micro-kernel sized from the ISA: an `mr x (nv * lanes)` block of the output held in vector
registers, one vector load of the packed weight per lane group and one broadcast of the other
operand per row at every step of the reduction, the weight packed once so that those loads are
contiguous.

This rule finds blocks of the form ``C[s] += A[..] * B[..]`` (fp32) where one operand, B, is
indexed by a spatial iterator `v` that A does not use (dense: the output column; conv2d NCHW:
the output channel) and A by a spatial iterator `r` that B does not use (dense: the row;
conv2d: the output column). It vectorizes `v` (B's loads; B is the layout-free weight, which
RewriteLayout packs, or contiguous along `v`), register-blocks `r`, runs every reduction loop
between the tile and the micro-kernel, parallelizes the outer tiles, and computes the block's
elementwise epilogue (bias, activation) on the tile while it is in registers. A convolution's
output y and x become one row index and its accumulator is laid out [rows, vector], so the
register block is whole vector registers whatever the output layout; a grouped convolution's
output channel is split into (group, channel in group), which makes each group a GEMM.

The register block (`mr`, `nv`) and the loop order are sampled decisions, so the evolutionary
search refines them; every sample has the analytic pick (the block that keeps the FMA pipes
busiest for the ISA's registers) as its decision, so a task that is never tuned gets it as its
default schedule.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import LoopRV, SBlockRV, Schedule
from tvm.sym.analyzer import Analyzer
from tvm.tirx import IndexMap

from .isa import VectorISA, vector_isa

# The block annotation that marks a block this rule scheduled: MetaSchedule's other rules skip
# blocks that carry a `schedule_rule` annotation.
RULE_NAME = "tuner.register_blocked"
ANNOTATION = "schedule_rule"
# The block of a Winograd convolution's 36 GEMMs (`tuner/rewrite/winograd.py`): batched over the
# transform's positions, which its neighbours do not split their threads by (`rows_parallel`).
WINOGRAD_GEMM = "bgemm"


def _keep(sch: Schedule, block: SBlockRV) -> list[Schedule]:
    """MetaSchedule's custom-rule hook for the annotation: the block stays as this rule left it."""
    return [sch]


@functools.cache
def register_annotation(rule: str = RULE_NAME) -> None:
    """Name the annotation `rule` as a custom rule (once per process), or MetaSchedule warns of
    an unknown rule and drops the annotation, and its other rules re-tile the block."""
    for key in ("cpu",):
        name = f"s_tir.meta_schedule.{key}.{rule}"
        if tvm.get_global_func(name, allow_missing=True) is None:
            tvm.register_global_func(name, _keep)


@dataclass(frozen=True)
class GemmLike:
    """The roles of a matched block's iterators (indices into its iter_vars)."""

    vector: int  # spatial, indexes B and C (not A, but for depthwise): vectorized
    rows: tuple[int, ...]  # spatial, index A and C, not B, adjacent loops: fused, register-blocked
    b_index: int  # which read is B
    # Depthwise conv: the dimension of A that the vector (the channel) indexes too. A is then
    # re-laid out channel-last, so that its loads are vectors rather than broadcasts.
    a_vector_dim: int | None = None


@dataclass(frozen=True)
class MicroKernel:
    mr: int  # rows of the register block
    nv: int  # vectors per row

    def registers(self) -> int:
        """Accumulators, B's vectors and one broadcast."""
        return self.mr * self.nv + self.nv + 1


def _vars(expr: tirx.PrimExpr) -> set[str]:
    return {v.name for v in tirx.analysis.undefined_vars(expr)}


def _index_vars(region: tirx.stmt.TensorRegion, ranges: Analyzer | None = None) -> list[set[str]]:
    """The iterators each dimension's index uses; with `ranges` (`_iterator_ranges`), simplified
    within the iterators' ranges (a split grouped conv reads ``(g * og + oi) // og``: `g`)."""
    if ranges is None:
        return [_vars(r.min) for r in region.region]
    return [_vars(ranges.simplify(r.min)) for r in region.region]


def _iterator_ranges(block: tvm.s_tir.SBlock) -> Analyzer:
    analyzer = Analyzer()
    for iv in block.iter_vars:
        analyzer.bind(iv.var, iv.dom)
    return analyzer


def _is_fp32_mac(block: tvm.s_tir.SBlock) -> bool:
    """``C[..] = C[..] + X * Y`` in float32."""
    store = block.body
    if not isinstance(store, tirx.stmt.BufferStore) or block.init is None:
        return False
    value = store.value
    if not isinstance(value, tirx.Add) or str(value.ty) != "float32":
        return False
    lhs, rhs = value.a, value.b
    if isinstance(rhs, TensorLoad) and rhs.source.same_as(store.buffer):
        lhs, rhs = rhs, lhs
    return (isinstance(lhs, TensorLoad) and lhs.source.same_as(store.buffer)
            and isinstance(rhs, tirx.Mul))


def match(sch: Schedule, block_rv: SBlockRV, layout_free: set[str]) -> GemmLike | None:
    """The block's roles if it is a GEMM-like fp32 reduction this rule can block, else None."""
    block = sch.get(block_rv)
    if len(block.reads) != 2 or len(block.writes) != 1 or not _is_fp32_mac(block):
        return None
    if any(str(r.source.dtype) != "float32" for r in block.reads):
        return None
    loops = sch.get_loops(block_rv)
    if len(loops) != len(block.iter_vars):
        return None
    names = [iv.var.name for iv in block.iter_vars]
    spatial = [iv.iter_type == tirx.IterVar.DataPar for iv in block.iter_vars]
    if all(spatial):
        return None
    out_vars = set().union(*_index_vars(block.writes[0]))
    ranges = _iterator_ranges(block)
    for b_index in (1, 0):
        a, b = block.reads[1 - b_index], block.reads[b_index]
        a_vars, b_idx = set().union(*_index_vars(a, ranges)), _index_vars(b, ranges)
        b_vars = set().union(*b_idx)
        vec = [i for i, n in enumerate(names) if spatial[i] and n in b_vars and n in out_vars and n not in a_vars]
        rows = [i for i, n in enumerate(names) if spatial[i] and n in a_vars and n in out_vars and n not in b_vars]
        if not vec or not rows:
            continue
        v = vec[-1]
        # Contiguous loads of B along v: B is packed at compile time, or already has v last.
        packed = b.source.name in layout_free
        if not packed and not (b_idx and b_idx[-1] == {names[v]} and len([s for s in b_idx if names[v] in s]) == 1):
            continue
        return GemmLike(vector=v, rows=_innermost_run(rows), b_index=b_index)
    return _match_depthwise(block, names, spatial, layout_free, out_vars, ranges)


def _innermost_run(rows: list[int]) -> tuple[int, ...]:
    """The innermost run of adjacent row iterators (conv2d: the output's y and x, fused so that
    a register block need not divide a small width such as 7 or 13)."""
    run = [rows[-1]]
    while run[0] - 1 in rows:
        run.insert(0, run[0] - 1)
    return tuple(run)


def _match_depthwise(block: tvm.s_tir.SBlock, names: list[str], spatial: list[bool], layout_free: set[str],
                     out_vars: set[str], ranges: Analyzer) -> GemmLike | None:
    """A depthwise convolution: ``C[n, c, y, x] += A[n, c (+ 0), y + ky, x + kx] * W[c, 0, ky, kx]``.

    The channel indexes both operands, so no GEMM roles exist; it is vectorized all the same,
    with the weight packed and A (an intermediate: the padding) re-laid out channel-last, each
    step one vector load of W and one of A per register-block row (shufflenet, MobileNet)."""
    for b_index in (1, 0):
        a, b = block.reads[1 - b_index], block.reads[b_index]
        if b.source.name not in layout_free:
            continue
        a_idx, b_idx = _index_vars(a, ranges), _index_vars(b, ranges)
        a_vars, b_vars = set().union(*a_idx), set().union(*b_idx)
        vec = [i for i, n in enumerate(names) if spatial[i] and n in a_vars and n in b_vars and n in out_vars]
        rows = [i for i, n in enumerate(names) if spatial[i] and n in a_vars and n in out_vars and n not in b_vars]
        if len(vec) != 1 or not rows:
            continue
        dims = [d for d, used in enumerate(a_idx) if names[vec[0]] in used]
        if len(dims) != 1:
            continue
        return GemmLike(vector=vec[0], rows=_innermost_run(rows), b_index=b_index, a_vector_dim=dims[0])
    return None


def depthwise_by_width(depthwise: bool, width: int, vector_extent: int, isa: VectorISA) -> bool:
    """Whether a depthwise conv's register blocks take their rows from the output's x alone (y
    among the parallel loops outside) instead of y and x fused, so that each block's padded input
    (the kernel's height in rows, one block of channels) is computed right before the row's
    blocks (`_pad_at`) instead of in a pass over the whole input first; the threads split the
    rows and channel blocks.

    Over fused rows a block may start mid-row (4 of shufflenet's 14x14), where MetaSchedule can
    bound no padding region. Both orders were timed on shufflenet's 14x14x272 depthwise conv
    (AVX2 code, AMD EPYC znver5): the padding in a pass of its own 0.0134-0.0147 ms, computed at
    each block 0.0107-0.0110 unvectorized, and vectorized 1.1x the search's kernel at 64
    trials/task, which does the same, against the default's 2.0-2.6x; in the rule 2x the search's
    until the kernel's taps were unrolled as well (the search's are: neighbouring columns of a
    block then share their loads), 1.14x after. Shufflenet's 6 depthwise kernels alone 0.54-0.70x
    the fused-rows default; default modules by turns (`bench/defaults_ab.py --without
    depthwise-by-width`, rounds where the VM changed state between the two excepted): shufflenet
    0.971 (AVX2 code), 0.969 (AVX-512), MobileNetV2 0.938 (AVX2), 0.937 (AVX-512); before the taps
    were unrolled 0.943, 0.969, 0.906, 0.974. Only where a block of 4 rows or more divides the
    width."""
    if not depthwise:
        return False
    kernels, _ = register_blocks(width, vector_extent, isa)
    return bool(kernels) and kernels[0].mr >= 4


# Rows of a register block at most (more never fit the registers with a vector each).
MAX_BLOCK_ROWS = 32
# Vectors per row of a register block. 5 or 6 only where they are the whole vector loop: a group
# of 40 channels (shufflenet's, after group padding) in one 2x5 block reads its input once, where
# 7x1 read it once per vector block: 0.042 ms against 0.062 alone, shufflenet's default module
# 0.926x by turns (AVX2 code; AVX-512 code 0.967x; AMD EPYC znver5). Elsewhere the blocks
# measured before stay: squeezenet's 1000-channel classifier (25 x 40) took 2x5 over 170 rows
# instead of 6x2 over channels padded to 1008 (`group_padding`), its module 0.996x, unproven.
MAX_BLOCK_VECTORS = 6


def _divisors(n: int, at_most: int) -> list[int]:
    """The divisors of `n` up to `at_most`: enumerating all of them made padding decisions
    (`tuner/rewrite/row_padding.py`, which asks for every row count it might pad to) quadratic:
    2.3 s for one 1x1 convolution at 112x112."""
    return [d for d in range(1, min(n, at_most) + 1) if n % d == 0]


# A one-vector register block of more rows than this spills on a 16-register ISA (below).
MAX_ONE_VECTOR_ROWS_16 = 7
# What a spilling block keeps of its modelled efficiency (13x1: 32% of the peak against 7x1's 48%).
SPILL_FACTOR = 0.6


def efficiency(kernel: MicroKernel, isa: VectorISA) -> float:
    """Share of the FMA pipes' peak the micro-kernel's inner step can reach: its FMAs against
    its loads (two per cycle) and the FMA latency each accumulator chain waits for.

    A block of one vector per row and more than 7 rows spills on AVX2's 16 registers although
    its count fits: LLVM unrolls the reduction by two and keeps both steps' B vectors and several
    broadcasts live (13x1 on 512 -> 1000 channels: 28 stack accesses per 26 FMAs in the inner
    loop, 32% of the FMA peak against 48% for 7x1; on 12x12 rows 8x1, 9x1, 12x1 ran at 35-38%
    against 6x1's 44%; AMD EPYC znver3). 6x2 (15 registers) does not spill."""
    fmas = kernel.mr * kernel.nv
    fma_cycles = fmas / isa.fma_units
    load_cycles = (kernel.nv + kernel.mr) / 2
    spills = isa.registers <= 16 and kernel.nv == 1 and kernel.mr > MAX_ONE_VECTOR_ROWS_16
    return fma_cycles / max(fma_cycles, load_cycles, isa.fma_latency) * (SPILL_FACTOR if spills else 1.0)


def usable_registers(isa: VectorISA) -> int:
    """Vector registers a register block may claim: three quarters of AVX-512's 32, all of
    AVX2's 16.

    LLVM needs the rest on AVX-512: in an NCHW 3x3 convolution it reuses one broadcast for the
    next kernel column's neighbouring row, keeping several broadcasts live at once. Blocks that
    claimed 30-31 of AVX-512's 32 registers (14x2, 28x1) spilled accumulators to the stack at
    every step there: 38-41% of the FMA peak on resnet50's 3x3 convolutions against 74-79% for
    7x2 or 8x2 (Intel Xeon, AVX-512, 2 cores). Channels last they do not spill, and the capped
    pick is as fast (7x2 84%, 14x2 85%: `bench/sweep_blocks.py 256,14,3,256`).
    On AVX2 three quarters (12) left squeezenet's last convolution (13x13 rows: 1 or 13 per
    block) a 1x1 block at 10% of the peak (8.8 ms of a 21 ms model); 13x1 (15 registers, no
    spill) runs it in 2.2 ms, and on 24x24 rows 6x2 (15) beat 4x2 by 1.26x (AMD EPYC, znver2).
    (Those layers are now padded to 14x13 rows, where 7x1 beats 13x1: see `efficiency`.)
    All 16 since 4x3 (12 accumulators, 3 B vectors, 1 broadcast) ran without a spill (LLVM folds
    B's loads into the FMAs where it runs short): on shufflenet's grouped 1x1 conv of 72 channels
    per group, the one block of more than one vector that divides them besides 2x3, it ran
    0.036 ms against 7x1's 0.051 (AMD EPYC znver5, AVX2 code). The only other block it admits,
    14x1, spills (`efficiency`)."""
    return isa.registers * 3 // 4 if isa.registers > 16 else isa.registers


def candidates(rows_extent: int, vector_extent: int, isa: VectorISA) -> list[MicroKernel]:
    """Register blocks that fit the usable registers and divide the loops (no remainder loops),
    best first; then those whose vectors cover every output channel (A, the activation, is then
    read once: resnet50's 1x1 conv of 256 to 64 channels at 56x56 ran at 58% of peak as 4x4 and
    35% as 8x2, which streams its 3.2 MB input twice); then fewer vectors per row (each weight
    vector feeds more rows: 7x2 and 8x2 measured 5-8% faster than 4x4 on 256 channels); then
    more accumulators. Blocks of more than 4 vectors only where they cover the whole vector loop
    (a group of 40 or 48 channels)."""
    found = []
    for nv in range(1, MAX_BLOCK_VECTORS + 1):
        if vector_extent % (nv * isa.lanes) or (nv > 4 and nv * isa.lanes != vector_extent):
            continue
        for mr in _divisors(rows_extent, MAX_BLOCK_ROWS):
            kernel = MicroKernel(mr, nv)
            if kernel.registers() <= usable_registers(isa):
                found.append(kernel)
    return sorted(found, key=lambda k: (-round(efficiency(k, isa), 3), k.nv * isa.lanes != vector_extent, k.nv,
                                        -k.mr * k.nv))


def rows_outer(reduction: int, vector_extent: int, vector_block: int, isa: VectorISA) -> bool:
    """Whether the register blocks sweep the vectors inside each row block (A-stationary)
    instead of the rows inside each vector block (B-stationary, the default).

    B-stationary keeps one packed panel of B (the reduction x one block's vectors) in L1 while
    A streams past it, and reads A once per vector block: right when B is large. When the whole
    of B fits in L1 with room to spare, it stays there in either order, and sweeping the vectors
    inside each row block reads A once instead: shufflenet's grouped 1x1 convolutions (34
    channels in, 40 out per group, 5 vector blocks of 8: B 5.4 KB, A 426 KB) re-read their input
    five times. Measured on AVX2 (AMD EPYC znver3, `bench/block_order.py`): shufflenet's 8
    kernels that change 5.18 -> 4.45 ms per inference (each 0.81-1.00x), squeezenet's 5 and
    resnet50's 2 within 1% in sum."""
    return vector_extent > vector_block and reduction * vector_extent * 4 <= isa.l1d_bytes // 2


def _operand_bytes(block: tvm.s_tir.SBlock, b_index: int) -> tuple[int, int, int]:
    """Bytes of A, B and C as their buffers hold them."""
    def size(region: tirx.stmt.TensorRegion) -> int:
        return math.prod(int(d) for d in region.source.shape) * region.source.dtype.bits // 8
    return size(block.reads[1 - b_index]), size(block.reads[b_index]), size(block.writes[0])


def rows_parallel(operand_bytes: tuple[int, int, int], others_extent: int, winograd: bool) -> bool:
    """Whether the threads split the kernel by its rows (output pixels, tiles, tokens) rather
    than by its outer loops in the rule's cache order (often the output channels).

    TVM's thread pool hands thread t the t-th contiguous chunk of a kernel's parallel loop, and
    the kernels around a GEMM (Winograd transforms, pools, concatenations, the elementwise
    kernels, MetaSchedule's tilings) split theirs by the output's rows. A GEMM split by output
    channels, or a Winograd GEMM split by its 36 positions, reads half of its input from the
    other core's cache and leaves half of its output there for the next kernel. Between cores
    that share no L3 (a VM's vCPUs on two CCXs, a server's threads across CCXs) a cache line's
    round trip took 330-350 ns against 55-81 within one (`bench/core_latency.py`), and
    squeezenet's Winograd kernels ran 2-7x slower there (`bench/results/core-states-squeezenet-
    znver4.json`). Split by rows, each thread reads the activations it wrote itself and all of
    the weights, which every core caches alike; so it pays where the activations outweigh the
    weights (a network's early layers, every Winograd GEMM of squeezenet), not where a layer's
    weights dwarf its pixels (resnet50's 7x7 layers: 4 MB of weights, 0.4 MB of input).
    Batched GEMMs (attention heads) keep their batch outermost, as their neighbours do."""
    a, b, c = operand_bytes
    return (winograd or others_extent == 1) and a + c >= b


# The reduction's panel length where a Winograd GEMM's weights dominate (`reduction_panel`).
PANEL = 64


def reduction_panel(weights_dominate: bool, reductions: list[int]) -> int | None:
    """The panel length of the reduction when a Winograd GEMM's weights outweigh its activations
    (few tiles, many channels), else None: each thread then takes whole positions, and for each
    panel of the reduction every vector block of the output passes over it, the accumulators of
    all of them kept in a local buffer between panels (in L1: tiles x channels).

    The plain order ran the whole reduction for one block of vectors after another: resnet50's 7x7
    layers (36 GEMMs of 4 tiles x 512 x 512, 37.7 MB of packed weights, read once either way) took
    2.0-2.6 ms on one thread of an AMD EPYC (znver4, AVX2 code), at 22% of the FMA peak on two,
    against 1.03-1.05 ms in panels of 64, what the search found at 64 trials/task (1.06-1.09 ms);
    the search's own loop nest with the reduction left whole ran 3.6 ms. Both orders stream the
    weights sequentially through the same 4x16 block of FMAs (no spills in either); why the panels
    run 2x faster per core was not pinned down (not the loop overhead: the plain order unrolled by
    2, 4 or 8 was no faster).
    On one thread the 28x28 layers' GEMMs (49 tiles, 128 channels) ran 0.65-0.66 ms against
    0.73, the 14x14 ones' (16 tiles, 256 channels) 0.75-0.78 against 0.78."""
    if not weights_dominate or len(reductions) != 1 or reductions[0] <= PANEL or reductions[0] % PANEL:
        return None
    return PANEL


def register_blocks(rows_extent: int, vector_extent: int, isa: VectorISA) -> tuple[list[MicroKernel], VectorISA]:
    """The register blocks for a kernel and the ISA narrowed to the vectors they use.

    Full vectors where they divide the vectorized loop, else half or quarter-width ones
    (resnet50's classifier: 1000 outputs, a multiple of 8 but not of 16 lanes; shufflenet's
    groups of 68 channels, of 4), never below 4 lanes (one SSE/NEON register). (One ragged
    vector of the whole loop, 68 lanes as 4 full vectors and a quarter one, was tried: LLVM
    shuffled it through the stack at every FMA, 4x slower than quarter-width vectors.)"""
    for lanes in [n for n in (isa.lanes, isa.lanes // 2, isa.lanes // 4) if n >= 4]:
        narrow = replace(isa, lanes=lanes)
        if kernels := candidates(rows_extent, vector_extent, narrow):
            return kernels, narrow
    return [], isa


def _param_names(sch: Schedule) -> list[str]:
    """The kernel's parameters (TVM 0.27 names each after its buffer)."""
    return [p.name for p in sch.mod["main"].params]


def _layout_free(sch: Schedule) -> set[str]:
    func = sch.mod["main"]
    indices = func.attrs.get("layout_free_buffers", []) if func.attrs else []
    names = _param_names(sch)
    return {names[int(i)] for i in indices}


def _epilogue(sch: Schedule, block_rv: SBlockRV) -> list[SBlockRV]:
    """Elementwise consumers of the block, the chain inlined into its last blocks, in order.
    Empty when the block writes a function output (nothing to fuse)."""
    if not sch.get_consumers(block_rv) or consumers_run_alone(sch, block_rv):
        return []
    return inline_blocks_after(sch, block_rv)


def inline_blocks_after(sch: Schedule, block_rv: SBlockRV) -> list[SBlockRV]:
    """Every block after `block_rv` inlined where it can be; the ones that cannot (the last,
    which writes the output), in order."""
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    mine = sch.get(block_rv)
    start = next(i for i, b in enumerate(blocks) if sch.get(b).same_as(mine)) + 1
    kept = []
    for b in blocks[start:]:
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 - ScheduleError: a block that cannot inline stays
            kept.append(b)
    return kept


def _split_groups(sch: Schedule, block_rv: SBlockRV) -> int | None:
    """A grouped convolution's output channel split into (group, channel in group).

    A grouped conv reads its input at ``o // og * cg + c``: the output channel `o` indexes the
    input, so no iterator is the weight's alone and nothing matches. Iterated as
    ``o = g * og + oi``, the input index is ``g * cg + c`` and `oi` is the weight's and output's
    only: a GEMM per group (shufflenet: 1x1 convs of 3-8 groups). Returns `og`, None when the
    block is no grouped conv (it is then left as it was)."""
    block = sch.get(block_rv)
    names = [iv.var.name for iv in block.iter_vars]
    divisions: list[tirx.FloorDiv] = []
    for read in block.reads:
        for r in read.region:
            tvm_ffi.structural_walk(r.min, [(tirx.FloorDiv, divisions.append)])
    for div in divisions:
        if not (isinstance(div.a, tirx.Var) and isinstance(div.b, tirx.IntImm) and div.a.name in names):
            continue
        pos = names.index(div.a.name)
        iv, og = block.iter_vars[pos], int(div.b)
        extent = int(iv.dom.extent)
        if iv.iter_type != tirx.IterVar.DataPar or og <= 1 or og >= extent or extent % og:
            continue
        _split_iterator(sch, block_rv, pos, og)
        return og
    return None


def _split_iterator(sch: Schedule, block_rv: SBlockRV, pos: int, factor: int) -> None:
    """The block's iterator `pos` made two, ``v // factor`` and ``v % factor``."""
    ndim = len(sch.get(block_rv).iter_vars)

    def index_map(*v: tirx.PrimExpr) -> tuple[tirx.PrimExpr, ...]:
        return (*v[:pos], v[pos] // factor, v[pos] % factor, *v[pos + 1:])

    sch.transform_block_layout(block_rv, IndexMap.from_func(index_map, ndim=ndim))


def _blocked(sch: Schedule, block_rv: SBlockRV, roles: GemmLike, isa: VectorISA, group: int | None = None) -> Schedule | None:
    """The micro-kernel schedule of the block, or None when the loops do not allow one.
    ``group``: the block is a grouped conv split by `_split_groups` with `group` output channels
    per group (the output's channel dimension is indexed by the group and the vector)."""
    block = sch.get(block_rv)
    names = [iv.var.name for iv in block.iter_vars]
    row_dims = _write_dims(block, [names[i] for i in roles.rows])
    vector_dims = _write_dims(block, [names[roles.vector]], alone=group is None)
    if row_dims is None or vector_dims is None or not _adjacent(row_dims):
        return None
    by_width = len(roles.rows) > 1 and depthwise_by_width(
        roles.a_vector_dim is not None, int(block.iter_vars[roles.rows[-1]].dom.extent),
        int(block.iter_vars[roles.vector].dom.extent), isa)
    if by_width:
        roles, row_dims = replace(roles, rows=roles.rows[-1:]), row_dims[-1:]
    if len(roles.rows) > 1:
        # conv2d: the output's y and x become one row iterator, so a register block that does
        # not divide the width (9 of 111, 25 of 55) still covers a fixed slice of rows.
        if not _fuse_iters(sch, block_rv, list(roles.rows)):
            return None
        merged = len(roles.rows) - 1
        roles = replace(roles, vector=roles.vector - merged if roles.vector > roles.rows[-1] else roles.vector,
                        rows=(roles.rows[0],))
    loops = sch.get_loops(block_rv)
    extents = [sch.get(lp).extent for lp in loops]
    if not all(isinstance(e, tirx.IntImm) for e in extents):
        return None
    extents = [int(e) for e in extents]
    full_lanes = isa.lanes
    kernels, isa = register_blocks(extents[roles.rows[0]], extents[roles.vector], isa)
    if not kernels:
        return None
    spatial = [iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block_rv).iter_vars]
    # The register block's rows and vectors: sampled among the blocks that fit, the analytic
    # pick as the decision (a trace cannot branch on a sample, so the two are sampled apart and
    # the search may also try pairs that spill; the cost model learns those are slow).
    best = kernels[0]
    rows = sorted({k.mr for k in kernels})
    widths = sorted({k.nv * isa.lanes for k in kernels})
    mr = sch.sample_categorical(rows, [1.0 / len(rows)] * len(rows), decision=rows.index(best.mr))
    nv_lanes = sch.sample_categorical(widths, [1.0 / len(widths)] * len(widths),
                                      decision=widths.index(best.nv * isa.lanes))
    r_outer, r_inner = sch.split(loops[roles.rows[0]], [None, mr])
    v_outer, v_inner = sch.split(loops[roles.vector], [None, nv_lanes])
    others = [lp for i, lp in enumerate(loops) if spatial[i] and i not in (*roles.rows, roles.vector)]
    reduce = [lp for i, lp in enumerate(loops) if not spatial[i]]
    # B's packed panel (the reduction x one register block's vectors) stays in cache while
    # every row block of A passes over it, unless all of B fits in L1 (`rows_outer`).
    reduction = math.prod(e for e, s in zip(extents, spatial) if not s)
    others_extent = math.prod(e for i, e in enumerate(extents) if spatial[i] and i not in (*roles.rows, roles.vector))
    by_rows = rows_parallel(_operand_bytes(block, roles.b_index), others_extent, block.name_hint == WINOGRAD_GEMM)
    if by_rows:
        # The threads split the rows, as the kernels before and after split theirs (see
        # `rows_parallel`): a Winograd GEMM's 36 positions go inside the row blocks.
        order = [r_outer, *others, v_outer]
    else:
        chosen = [r_outer, v_outer] if rows_outer(reduction, extents[roles.vector], best.nv * isa.lanes, isa) \
            and not by_width else [v_outer, r_outer]
        order = [*others, *chosen]
    panel = reduction_panel(block.name_hint == WINOGRAD_GEMM and not by_rows and bool(others),
                            [e for e, s in zip(extents, spatial) if not s])
    if panel:
        rc_outer, rc_inner = sch.split(reduce[0], [None, panel])
        order = others
        sch.reorder(*order, rc_outer, v_outer, r_outer, rc_inner, r_inner, v_inner)
        reduce = [rc_outer, rc_inner]
    else:
        sch.reorder(*order, *reduce, r_inner, v_inner)
    tile = order[-1]
    if roles.a_vector_dim is not None and not _channel_last(sch, block_rv, 1 - roles.b_index, roles.a_vector_dim,
                                                           isa.lanes):
        return None
    narrowed_lanes = vector_step(isa, full_lanes, widths)
    if by_width:  # one channel block's padded rows, for all the blocks of its output row
        _pad_at(sch, block_rv, 1 - roles.b_index, order[-2], narrowed_lanes)
    epilogue = _epilogue(sch, block_rv)
    out = sch.get(block_rv).writes[0].source
    if not epilogue:
        if not _is_param(sch, out) and not consumers_run_alone(sch, block_rv):
            return None
        epilogue = [sch.cache_write(block_rv, 0, "local")]
    else:
        sch.set_scope(block_rv, 0, "local")
    _accumulator_layout(sch, block_rv, row_dims, vector_dims[0], group)
    accumulator = sch.get(block_rv).writes[0].source
    for b in epilogue:
        positions = row_dims if len(row_dims) > 1 else _row_positions(sch, b, accumulator) or []
        if len(positions) > 1 and not _fuse_iters(sch, b, positions, positional=True):
            return None
        if group is not None:
            _split_group_channel(sch, b, accumulator, group)
        sch.reverse_compute_at(b, tile, preserve_unit_loops=True)
    for b in epilogue:
        inner = sch.get_loops(b)[len(others) + 2:]
        if inner:
            _vectorize(sch, inner[-1], narrowed_lanes)
        sch.annotate(b, ANNOTATION, RULE_NAME)
    fused = sch.fuse(*(order[:-1] if by_width else order))
    sch.parallel(fused)
    sch.unroll(r_inner)
    if by_width:  # the kernel's taps too: the block's neighbouring columns share their loads
        for lp in reduce:
            sch.unroll(lp)
    _vectorize(sch, v_inner, narrowed_lanes)
    sch.decompose_reduction(block_rv, reduce[0])
    sch.annotate(block_rv, ANNOTATION, RULE_NAME)
    _parallel_producers(sch, block_rv)
    # MetaSchedule's parallelize/vectorize postprocessor would re-fuse and re-vectorize the
    # kernel's loops (and fail on the vectorized ones): the root keeps none of its annotations.
    sch.annotate(sch.get_sblock("root"), ANNOTATION, RULE_NAME)
    return sch


def _producer_of(sch: Schedule, block_rv: SBlockRV, read: int) -> SBlockRV | None:
    """The block that writes the block's input `read` in this kernel, None for a parameter."""
    buf = sch.get(block_rv).reads[read].source
    return next((p for p in sch.get_producers(block_rv) if any(w.source.same_as(buf) for w in sch.get(p).writes)),
                None)


def _channel_last(sch: Schedule, block_rv: SBlockRV, read: int, dim: int, lanes: int) -> bool:
    """Re-lay out a depthwise conv's input (its padding, computed in the kernel) with the channel
    last, and make the padding's innermost loop one vector of channels, so the conv loads whole
    vectors of channels at each (y + ky, x + kx). False when the input is the kernel's parameter
    (no padding block to re-lay out)."""
    buf = sch.get(block_rv).reads[read].source
    if _is_param(sch, buf):
        return False
    producer = _producer_of(sch, block_rv, read)
    if producer is None:
        return False
    ndim = len(buf.shape)
    sch.transform_layout(block_rv, ("read", read),
                         IndexMap.from_func(lambda *i: (*i[:dim], *i[dim + 1:], i[dim]), ndim=ndim))
    loops = sch.get_loops(producer)
    if len(loops) == ndim:
        # One vector of channels innermost (all 544 of them vectorized took LLVM minutes).
        outer, inner = sch.split(loops[dim], [None, lanes])
        sch.reorder(*loops[:dim], *loops[dim + 1:], outer, inner)
    return True


def _adjacent(positions: list[int]) -> bool:
    return positions == list(range(positions[0], positions[0] + len(positions)))


def _write_dims(block: tvm.s_tir.SBlock, iter_names: list[str], alone: bool = True) -> list[int] | None:
    """The dimensions of the block's output that the named iterators index, one each (`alone`:
    and no other iterator indexes that dimension)."""
    indices = [_vars(r.min) for r in block.writes[0].region]
    dims = []
    for name in iter_names:
        found = [d for d, used in enumerate(indices) if (used == {name} if alone else name in used)]
        if len(found) != 1:
            return None
        dims.append(found[0])
    return dims


def _row_major(index: tuple[tirx.PrimExpr, ...], dims: list[int], extents: list[int]) -> tirx.PrimExpr:
    """The dimensions `dims` of `index` as one row-major index (y, x -> y * W + x)."""
    fused = index[dims[0]]
    for d in dims[1:]:
        fused = fused * extents[d] + index[d]
    return fused


def _fuse_iters(sch: Schedule, block_rv: SBlockRV, positions: list[int], positional: bool = False) -> bool:
    """Make the block iterate over one fused index in place of its adjacent iterators at
    `positions` (the output's y and x). Computed at a register block's tile, a block iterating
    y and x separately covers a region whose size MetaSchedule cannot bound when the block
    starts mid-row (it rejects the dynamic loop); over the fused index it is one fixed slice, and
    in NCHW the fused index is the contiguous one, so an epilogue's stores vectorize.

    ``positional``: the block's iterators must index its output's dimensions in order (an
    elementwise epilogue), so that `positions` are output dimensions too."""
    block = sch.get(block_rv)
    names = [iv.var.name for iv in block.iter_vars]
    if positional and (_write_dims(block, names) != list(range(len(names)))
                       or len(names) != len(block.writes[0].region)):
        return False
    extents = [int(iv.dom.extent) for iv in block.iter_vars]
    first, last = positions[0], positions[-1]

    def index_map(*iv: tirx.PrimExpr) -> tuple[tirx.PrimExpr, ...]:
        return (*iv[:first], _row_major(iv, positions, extents), *iv[last + 1:])

    try:
        sch.transform_block_layout(block_rv, IndexMap.from_func(index_map, ndim=len(names)))
    except Exception:  # noqa: BLE001 - ScheduleError: the block keeps its iteration domain
        return False
    return True


def _row_positions(sch: Schedule, block_rv: SBlockRV, accumulator: tirx.Buffer) -> list[int] | None:
    """The epilogue's iterators that index the accumulator's rows (laid out [others, rows,
    vector] by `_accumulator_layout`), in order: one (a dense's epilogue), or the output's y
    and x of a 1x1 convolution computed as a GEMM over padded rows
    (`tuner/rewrite/row_padding.py`), which reads row ``y * W + x``. None when they are not
    adjacent or the block does not read the accumulator (a later epilogue block)."""
    block = sch.get(block_rv)
    names = [iv.var.name for iv in block.iter_vars]
    reads = [r for r in block.reads if r.source.same_as(accumulator)]
    if len(reads) != 1:
        return None
    used = _vars(reads[0].region[len(accumulator.shape) - 2].min)
    positions = [i for i, n in enumerate(names) if n in used]
    return positions if positions and _adjacent(positions) else None


def vector_step(isa: VectorISA, full_lanes: int, widths: list[int]) -> int | None:
    """The lanes of each vector the register block's vector loop is emitted as, None to
    vectorize it whole: one register's (`isa`'s) where the ISA was narrowed or where a block
    the search may sample spans 3 registers, which LLVM never sees as one vector. Vectorized
    whole, a 3-vector block (48 lanes on AVX-512) ran at 2-3% of the FMA peak: squeezenet's
    classifier as 6x3 on 174 padded rows took 24.7 ms, 0.57 ms (74%) as three 16-lane vectors
    (Intel Xeon, rocketlake). Whole default modules with and without (AVX-512 on an AMD EPYC
    znver5, `bench/defaults_ab.py --without vector-step`, 7 rounds by turns): squeezenet 0.109x,
    shufflenet 0.41x, resnet50 1.010x. Blocks of 1, 2 or 4 vectors stay whole. (The figures once
    given for splitting those too, 1-3% slower, came from a defaults_ab that compiled both
    variants with the switch on: no evidence either way.)"""
    ragged = any((w // isa.lanes) & (w // isa.lanes - 1) for w in widths)
    return isa.lanes if isa.lanes < full_lanes or ragged else None


def _vectorize(sch: Schedule, loop: LoopRV, lanes: int | None) -> None:
    """`loop` vectorized; with `lanes` (narrowed vectors), as an unrolled loop of `lanes`-wide
    vectors. One vector of 3 x 8 lanes on AVX-512 is no whole number of registers: LLVM built it
    element by element (vinsertps), and shufflenet's first convolution (24 channels) ran at 3%
    of the peak, against 24% for the same block as AVX2 code."""
    if lanes is None:
        sch.vectorize(loop)
        return
    outer, inner = sch.split(loop, [None, lanes])
    sch.unroll(outer)
    sch.vectorize(inner)


def _accumulator_layout(sch: Schedule, block_rv: SBlockRV, row_dims: list[int], vector_dim: int,
                        group: int | None = None) -> None:
    """Lay the register accumulator out as [other axes, rows fused, vector].

    The accumulator first keeps the output's layout. In NCHW the vectorized output channel is
    not the innermost axis, so each FMA's accumulator was a 16-element gather and scatter
    through the stack (2-3% of peak on resnet50's convolutions); and with the output's y and x
    fused into the register block's rows, a block that starts inside a row (14 of 56) has
    no constant offset, so the accumulator stayed in memory. Laid out by the fused row index and
    the vector, a register block is one constant-offset slice: whole vector registers, as in a
    matmul. A grouped conv's channel is laid out [group, rows, channel in group]."""
    shape = [int(e) for e in sch.get(block_rv).writes[0].source.shape]
    others = [d for d in range(len(shape)) if d not in (*row_dims, vector_dim)]
    if (group is None and others == list(range(row_dims[0])) and len(row_dims) == 1
            and vector_dim == len(shape) - 1):
        return  # already [others, rows, vector] (dense, matmul)

    def index_map(*idx: tirx.PrimExpr) -> tuple[tirx.PrimExpr, ...]:
        fused = _row_major(idx, row_dims, shape)
        if group is not None:
            return (*[idx[d] for d in others], idx[vector_dim] // group, fused, idx[vector_dim] % group)
        return (*[idx[d] for d in others], fused, idx[vector_dim])

    sch.transform_layout(block_rv, ("write", 0), IndexMap.from_func(index_map, ndim=len(shape)))


def _split_group_channel(sch: Schedule, block_rv: SBlockRV, accumulator: tirx.Buffer, group: int) -> None:
    """An epilogue of a grouped conv iterated over (group, channel in group), as the conv is
    (`_split_groups`), instead of the output channel.

    Over the output channel it reads the accumulator at ``[c // og, row, c % og]``; computed at
    a register block of several vectors (3 x 8 of shufflenet's 72 channels per group), TVM did
    not prove that ``c // og`` stays one group across the block, so the accumulator was kept
    whole in memory and every FMA loaded and stored its accumulator: 2x3 ran at 20% of the FMA
    peak, 4x3 at 34% (AVX2 code, AMD EPYC znver5). One-vector blocks were not affected."""
    block = sch.get(block_rv)
    names = [iv.var.name for iv in block.iter_vars]
    reads = [r for r in block.reads if r.source.same_as(accumulator)]
    if len(reads) != 1:
        return
    used = [i for i, n in enumerate(names) if n in _vars(reads[0].region[-1].min)]
    if len(used) != 1 or int(block.iter_vars[used[0]].dom.extent) % group:
        return
    _split_iterator(sch, block_rv, used[0], group)


def _inline_copies(sch: Schedule, block_rv: SBlockRV) -> None:
    """Producers that only copy their input (TOPI pads a grouped convolution even when the
    padding is nothing: shufflenet's 1x1 ones) inlined, so the register block reads the input in
    place instead of a copy that a kernel of its own wrote just before (a pass over the whole
    input, parallel by rows of its own). Real padding stays a producer: inlined, its bounds
    check would sit in the FMA loop. AVX2 code on an AMD EPYC (znver5): shufflenet's 8 kernels
    that change 0.64-0.93x alone, squeezenet's 4 (its pad-free convs) 0.84-0.98x; default modules
    by turns (`bench/defaults_ab.py --without inline-copies`) shufflenet median 0.974, squeezenet
    0.986, resnet50 0.998."""
    for producer in sch.get_producers(block_rv):
        block = sch.get(producer)
        body, names = block.body, [iv.var for iv in block.iter_vars]
        if (isinstance(body, tirx.BufferStore) and isinstance(body.value, TensorLoad)
                and len(body.indices) == len(names) == len(body.value.indices)
                and all(a.same_as(v) and b.same_as(v) for a, b, v in zip(body.indices, body.value.indices, names))
                and [int(d) for d in body.buffer.shape] == [int(d) for d in body.value.source.shape]):
            try:
                sch.compute_inline(producer)
            except Exception:  # noqa: BLE001 - ScheduleError (e.g. the copy is an output too): it stays
                continue


def _pad_at(sch: Schedule, block_rv: SBlockRV, read: int, tile: LoopRV, lanes: int | None) -> None:
    """The producer of the block's input `read` (a depthwise conv's padding) computed at `tile`,
    its channel loop vectorized as the block's (`_vectorize`: 3 vectors of 16 lanes as one took
    MobileNetV2's 56x56x144 depthwise conv 1.9x the time) and annotated as the rule's (see
    `_parallel_producers`)."""
    producer = _producer_of(sch, block_rv, read)
    sch.compute_at(producer, tile, preserve_unit_loops=True)
    _vectorize(sch, sch.get_loops(producer)[-1], lanes)
    sch.annotate(producer, ANNOTATION, RULE_NAME)


def _parallel_producers(sch: Schedule, block_rv: SBlockRV) -> None:
    """Producers computed at the root (conv2d's padding): outer loops parallel, inner
    vectorized, as MetaSchedule's postprocessor would have made them. They carry the rule's
    annotation, so MetaSchedule's random compute-at leaves them there: moved into a register
    block's tile that starts mid-row, the padding's loops get a dynamic extent and the
    candidate is rejected."""
    outer = sch.get(sch.get_loops(block_rv)[0])
    for producer in sch.get_producers(block_rv):
        if _runs_alone(sch, producer):
            continue  # a kernel of its own (a Winograd input transform), scheduled by its rule
        if any(sch.get(lp).same_as(outer) for lp in sch.get_loops(producer)):
            continue  # computed inside the block's loops (`_pad_at`)
        sch.annotate(producer, ANNOTATION, RULE_NAME)
        loops = sch.get_loops(producer)
        if len(loops) < 2:
            continue
        try:
            sch.parallel(sch.fuse(*loops[:2]))
            sch.vectorize(loops[-1])
        except Exception:  # noqa: BLE001 - a producer that cannot be parallel stays serial
            continue


def _is_reduction(sch: Schedule, block_rv: SBlockRV) -> bool:
    return any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(block_rv).iter_vars)


def _runs_alone(sch: Schedule, block_rv: SBlockRV) -> bool:
    """A consumer that reduces over what it reads, or that a rule of its own schedules (a
    Winograd GEMM's inverse transform), cannot be an epilogue of the GEMM's register block."""
    return _is_reduction(sch, block_rv) or ANNOTATION in sch.get(block_rv).annotations


def consumers_run_alone(sch: Schedule, block_rv: SBlockRV) -> bool:
    return any(_runs_alone(sch, c) for c in sch.get_consumers(block_rv))


def _is_param(sch: Schedule, buf: tirx.Buffer) -> bool:
    return buf.name in _param_names(sch)


@derived_object
class RegisterBlockedGemm(ms.schedule_rule.PyScheduleRule):
    """The micro-kernel schedule for GEMM-like blocks; `keep_stock` also keeps the unscheduled
    block for MetaSchedule's own rules (the search space), otherwise only the micro-kernel (the
    default schedule)."""

    def __init__(self, keep_stock: bool = True) -> None:
        super().__init__()
        self.keep_stock = keep_stock
        self.isa: VectorISA | None = None
        register_annotation()

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        self.isa = vector_isa(context.target)

    def apply(self, sch: Schedule, block: SBlockRV) -> list[Schedule]:
        if self.isa is None:
            return [sch]
        blocked = sch.copy()
        try:
            _inline_copies(blocked, block)
            group = _split_groups(blocked, block)
            roles = match(blocked, block, _layout_free(blocked))
            result = None if roles is None else _blocked(blocked, block, roles, self.isa, group)
        except Exception:  # noqa: BLE001 - ScheduleError, InternalError: the block stays unblocked
            result = None
        if result is None:
            return [sch]
        # A GEMM whose consumer another rule schedules (a Winograd kernel's inverse transform)
        # gets no stock variant: MetaSchedule's tiling computes its cache write at that consumer
        # and fails ("TensorRegion pattern match failed"), which ends the design space.
        return [result, sch] if self.keep_stock and not consumers_run_alone(sch, block) else [result]

    def clone(self) -> ms.schedule_rule.ScheduleRule:
        rule = RegisterBlockedGemm(self.keep_stock)
        rule.isa = self.isa
        return rule
