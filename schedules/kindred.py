"""Seeds for a search from kernels of the same structure that other models' searches tuned.

MetaSchedule's evolutionary search starts each round from the best records of the task's own
workload (`get_top_k`), so a kernel no search has seen starts from random samples, even when the
shared database holds hundreds of measured schedules of the same operator at other shapes
(resnet50's 1x1 convolutions beside squeezenet's and inception's). A record's trace cannot be
replayed on another shape as it is: its tile sizes are factors of the old loop extents, and the
register-blocked rule's categorical choices are indices into lists built from the old shape.
So the trace is not replayed; its *decisions* are carried over to this task's own design space
(the same rule path, so the same sampling instructions in the same order): tile factors refitted
to this task's extents (the inner ones kept as close as divisibility allows: they are the
register and cache blocks), categorical choices mapped by value to the nearest candidate of this
task's list, compute locations kept where they are valid. A seed that does not apply is dropped.
Kin are kernels of the same structure (blocks and iterator kinds) nearest in size, then those
that share only the reducing block (a convolution with a residual add after it is kin to one
with a bias and ReLU: the rules inline such epilogues; `Skeleton`).

The seeds only join the search's initial population (`SeededDatabase.get_top_k`, which only the
evolutionary search calls): they are mutated and ranked by the cost model like the rest, and a
schedule is served only after it was measured on this workload and checked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from tvm.ir import IRModule
from tvm.ir.utils import derived_object
from tvm.s_tir import Schedule, Trace
from tvm.s_tir.meta_schedule.database import PyDatabase, TuningRecord, Workload

_TILE = "SamplePerfectTile"
_CATEGORICAL = "SampleCategorical"
_COMPUTE_AT = "SampleComputeLocation"
SAMPLING = (_TILE, _CATEGORICAL, _COMPUTE_AT)

# Iterator kinds (tirx.IterVar) of a reduction: commutative (sums, maxima) and ordered.
_REDUCTION_KINDS = "23"


class Skeleton(NamedTuple):
    """A kernel's structure without its sizes, and its sizes. `key`: every block's name and
    iterator kinds (data-parallel, reduction) in order; kernels with the same key come from the
    same operator and epilogue, so the schedule rules take the same path through them. `anchor`:
    only the blocks that reduce (the operator: `conv2d_nhwc` with its kinds), so a convolution
    with a residual add in its epilogue is kin to one without; the rules inline such
    element-wise epilogues, so their design spaces usually sample the same decisions (`refit`
    checks, and drops a kin whose sampling differs). Kernels without a reduction anchor on all
    their blocks. `extents` and `anchor_extents`: those blocks' iterator extents."""

    key: str
    extents: tuple[int, ...]
    anchor: str
    anchor_extents: tuple[int, ...]


def skeleton(mod: IRModule) -> Skeleton:
    """The structure and sizes of `mod`'s kernel (see `Skeleton`)."""
    sch = Schedule(mod)
    blocks: list[tuple[str, tuple[int, ...], bool]] = []

    def walk(block_rv: Any) -> None:
        for child in sch.get_child_blocks(block_rv):
            block = sch.get(child)
            kinds = "".join(str(int(iv.iter_type)) for iv in block.iter_vars)
            extents = tuple(int(iv.dom.extent) if hasattr(iv.dom.extent, "value") else 0 for iv in block.iter_vars)
            blocks.append((f"{block.name_hint}:{kinds}", extents, any(k in _REDUCTION_KINDS for k in kinds)))
            walk(child)

    walk(sch.get_sblock("root"))
    anchors = [b for b in blocks if b[2]] or blocks
    return Skeleton("|".join(b[0] for b in blocks), tuple(e for b in blocks for e in b[1]),
                    "|".join(b[0] for b in anchors), tuple(e for b in anchors for e in b[1]))


def kin_order(own: Skeleton, other: Skeleton) -> tuple[int, float] | None:
    """Where `other` ranks as a kin of `own` (lower first), None when it is none: kernels of the
    same full structure first, nearest in size first, then those of the same anchor only."""
    if other.key == own.key:
        return 0, shape_distance(other.extents, own.extents)
    if other.anchor == own.anchor:
        return 1, shape_distance(other.anchor_extents, own.anchor_extents)
    return None


def shape_distance(a: Sequence[int], b: Sequence[int]) -> float:
    """How far apart two kernels of one structure are in size: the sum over their iterators of
    |log(extent ratio)| (a 2x larger channel count and a 2x smaller image weigh the same)."""
    return sum(abs(math.log(max(x, 1) / max(y, 1))) for x, y in zip(a, b))


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def refit_tile(factors: Sequence[int], extent: int, max_innermost: int) -> list[int]:
    """Tile factors of `extent` as close to `factors` (tiles of another extent) as divisibility
    allows, from the innermost out; the outermost takes what is left."""
    out = [1] * len(factors)
    rest = extent
    for i in range(len(factors) - 1, 0, -1):
        choices = _divisors(rest)
        if i == len(factors) - 1 and max_innermost > 0:
            choices = [d for d in choices if d <= max_innermost] or [1]
        want = max(int(factors[i]), 1)
        out[i] = min(choices, key=lambda d: (abs(math.log(d / want)), d))
        rest //= out[i]
    out[0] = rest
    return out


def _nearest_index(candidates: Sequence[Any], value: Any) -> int:
    """The index of the candidate nearest `value` (log scale for positive numbers)."""
    def gap(c: Any) -> float:
        try:
            c, v = float(c), float(value)
        except (TypeError, ValueError):
            return 0.0 if c == value else math.inf
        if c > 0 and v > 0:
            return abs(math.log(c / v))
        return abs(c - v)

    return min(range(len(candidates)), key=lambda i: (gap(candidates[i]), i))


def _plain(value: Any) -> Any:
    """A trace attribute (FFI IntImm, FloatImm, Array) as a Python value."""
    if hasattr(value, "value"):
        return value.value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "Array":
        return [_plain(v) for v in value]
    return value


def _decisions(trace: Trace) -> list[tuple[str, Any, Any]] | None:
    """(kind, attributes, decision) of the sampling instructions before post-processing."""
    out = []
    for inst in trace.insts:
        kind = inst.kind.name
        if kind == "EnterPostproc":
            break
        if kind in SAMPLING:
            decision = trace.decisions.get(inst)
            if decision is None:
                return None
            out.append((kind, _plain(inst.attrs), _plain(decision)))
        elif kind.startswith("Sample"):
            return None  # a sampling instruction this module cannot carry over
    return out


class _NoFit(Exception):
    """A carried decision has no counterpart here (a tile of another depth)."""


def refit(mod: IRModule, space: Schedule, foreign: Trace) -> Trace | None:
    """`foreign`'s decisions applied to `space` (a design space of `mod`, the unscheduled
    kernel, drawn by the same rules), or None where its rule path differs or a carried decision
    is invalid here."""
    # The same sampling instructions in the same order (the instructions between them may differ
    # with the shape, e.g. a split left out where a block is one vector).
    wanted, own = _decisions(foreign), _decisions(space.trace)
    if wanted is None or own is None or [k for k, _, _ in own] != [k for k, _, _ in wanted]:
        return None
    sch = Schedule(mod, debug_mask="all")
    turn = iter(wanted)

    def provide(inst: Any, inputs: list[Any], attrs: list[Any], decision: Any) -> Any:
        kind = inst.kind.name
        if kind not in SAMPLING:
            return decision
        _, old_attrs, old = next(turn)
        if kind == _TILE:
            extent = sch.get(inputs[0]).extent
            n, max_innermost = int(attrs[0]), int(attrs[1])
            if not hasattr(extent, "value") or len(old) != n:
                raise _NoFit
            return refit_tile(old, int(extent.value), max_innermost)
        if kind == _CATEGORICAL:
            return _nearest_index(_plain(attrs[0]), old_attrs[0][int(old)])
        return int(old)  # a compute location: the same loop, if it exists here

    try:
        space.trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=provide)
    except Exception:  # noqa: BLE001 - _NoFit, or TVM's ScheduleError/TVMError for an invalid decision
        return None
    return sch.trace


def seeds_for(mod: IRModule, spaces: Sequence[Schedule], foreign: Sequence[Trace], limit: int) -> list[Trace]:
    """Up to `limit` traces of `mod`'s design spaces carrying `foreign`'s decisions, in
    `foreign`'s order (its best first), without duplicates."""
    out: list[Trace] = []
    seen: set[str] = set()
    for trace in foreign:
        for space in spaces:
            fitted = refit(mod, space, trace)
            if fitted is None:
                continue
            key = str(fitted)
            if key not in seen:
                seen.add(key)
                out.append(fitted)
            break
        if len(out) >= limit:
            break
    return out


@derived_object
class SeededDatabase(PyDatabase):
    """One task's search's view of the tuning database: `get_top_k` tops up the task's own
    records with `seeds` (traces of its kernel, unmeasured); everything else is the
    database's. Only the evolutionary search holds this view (its initial population): the task
    scheduler, the measure callbacks and compilation use the database itself, so a seed is never
    served or counted as measured."""

    def __init__(self, inner: PyDatabase, seeds: Sequence[Trace]) -> None:
        super().__init__()
        self.inner = inner
        self.seeds = list(seeds)

    def has_workload(self, mod: IRModule) -> bool:
        return self.inner.has_workload(mod)

    def commit_workload(self, mod: IRModule) -> Workload:
        return self.inner.commit_workload(mod)

    def commit_tuning_record(self, record: TuningRecord) -> None:
        self.inner.commit_tuning_record(record)

    def get_top_k(self, workload: Workload, top_k: int) -> list[TuningRecord]:
        # Only the evolutionary search of this view's task calls it, with that task's workload.
        own = list(self.inner.get_top_k(workload, top_k))
        return own + [TuningRecord(trace, workload) for trace in self.seeds[:max(0, top_k - len(own))]]

    def get_all_tuning_records(self) -> list[TuningRecord]:
        return self.inner.get_all_tuning_records()

    def query_tuning_record(self, mod: IRModule, target: Any, workload_name: str | None = None) -> TuningRecord | None:
        return self.inner.query_tuning_record(mod, target, workload_name)

    def __len__(self) -> int:
        return len(self.inner)

