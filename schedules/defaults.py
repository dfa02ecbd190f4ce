"""Default schedules for kernels the database has no record for.

On CUDA these are TVM's dlight rules (matmul, GEMV, reductions, then a fallback that binds any
loop nest to blocks and threads): an unscheduled kernel cannot even launch on a GPU.

On CPU, an unscheduled TIR kernel is a single-threaded scalar loop nest, often 100x slower than needed.
TVM's dlight rules cover only GEMV and reductions on CPU, so tuner takes MetaSchedule's own
design space and applies one deterministic sample of it: tiled, with an outer loop parallel and
the inner one vectorized. It costs no measurement. When no sample passes the postprocessors
(rare shapes), the root block is annotated for parallelism and vectorization and MetaSchedule's
own postprocessor applies what is legal. A kernel with nothing to parallelize stays as it is and
is counted as `unscheduled`.

Where the database holds a cost model of the hardware family (schedules/cost_model.py) and the
run asks for it (`cost_model.rank_defaults`), a CPU task's default is instead the best the
model predicts among that sample and `RANKED_SAMPLES` re-draws of its decisions (register
blocks, tiles, unroll): still unmeasured, but chosen by what every team measured on that
hardware (report: `default_schedules.ranked`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tvm_ffi
from tvm import tirx
from tvm.ir import IRModule
from tvm.s_tir import dlight as dl
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Schedule, Trace
from tvm.target import Target

from .space import space_generator

_SEEDS = (1, 2, 3, 4, 5, 6, 7, 8)
RANKED_SAMPLES = 32

# Picks the index of the best of a workload's candidate schedules (a cost model's prediction).
Ranker = Callable[[IRModule, list[Schedule]], int]


@dataclass
class DefaultScheduleStats:
    sampled: int = 0  # CPU: from MetaSchedule's design space
    ranked: int = 0  # CPU: of those, picked by the family's cost model among re-drawn samples
    simple: int = 0  # CPU: from the plain parallel + vectorize rule
    dlight: int = 0  # CUDA: from TVM's dlight GPU rules
    unscheduled: int = 0  # left as they were (CPU: nothing to parallelize)

    def as_dict(self) -> dict[str, int]:
        return {"sampled": self.sampled, "ranked": self.ranked, "simple": self.simple, "dlight": self.dlight,
                "unscheduled": self.unscheduled}

    @property
    def total(self) -> int:
        return self.sampled + self.simple + self.dlight + self.unscheduled


def dlight_rules() -> list[dl.ScheduleRule]:
    """The rules and order of TVM's own CUDA pipeline (its `legalize_passes`), so the untuned
    baseline and our defaults are the same kernels."""
    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def dlight_schedule(func: tirx.PrimFunc, target: Target) -> Schedule | None:
    """The first dlight rule that applies, as a Schedule whose trace can be stored and replayed."""
    func = func.with_attr("global_symbol", "main")
    for rule in dlight_rules():
        with target:
            space = rule.apply(func, target, False)
        if space is None:
            continue
        return space[0] if isinstance(space, list) else space
    return None


def default_schedule(func: tirx.PrimFunc, target: Target, ranker: Ranker | None = None) -> Schedule | None:
    """A task's default schedule as a Schedule whose trace can be stored as a record and
    replayed: dlight's on CUDA, the sampled design space's on CPU (the best `ranker` predicts,
    where there is one); None when there is none."""
    if target.kind.name == "cuda":
        return dlight_schedule(func, target)
    return _sample_design_space(func, target, ranker)[0]


def _sample_design_space(func: tirx.PrimFunc, target: Target,
                         ranker: Ranker | None = None) -> tuple[Schedule | None, bool]:
    """The first sample of the default design space that passes the postprocessors (its trace
    holds them, so it replays as compiled), or, with a `ranker`, the best it predicts among that
    sample and its re-draws; and whether the ranker picked another than the first sample."""
    mod = IRModule({"main": func.with_attr("global_symbol", "main")})
    for seed in _SEEDS:
        ctx = ms.TuneContext(
            mod=mod,
            target=target,
            space_generator=space_generator(target, default=True),
            search_strategy="replay-trace",
            rand_state=seed,
            num_threads=1,
        )
        postprocs = list(ctx.space_generator.postprocs)
        spaces = list(ctx.generate_design_space())
        for sch in spaces:
            if all(p.apply(sch) for p in postprocs):
                if ranker is None:
                    return sch, False
                candidates = [sch, *_redraws(mod, spaces, postprocs, seed)]
                best = ranker(mod, candidates) if len(candidates) > 1 else 0
                return candidates[best], best != 0
    return None, False


def _redraws(mod: IRModule, spaces: list[Schedule], postprocs: list[ms.Postproc], seed: int) -> list[Schedule]:
    """Up to RANKED_SAMPLES schedules of the design spaces with every sampled decision drawn
    anew (as MetaSchedule's replay-trace search draws them) that pass the postprocessors."""
    out: list[Schedule] = []
    for i in range(RANKED_SAMPLES):
        space = spaces[i % len(spaces)]
        sch = Schedule(mod, seed=seed * 1000 + i + 1)
        try:
            Trace(space.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
            if all(p.apply(sch) for p in postprocs):
                out.append(sch)
        except Exception:  # noqa: BLE001 - a draw the primitives or postprocessors refuse
            # (RewriteLayout raised InternalError "args.size() == initial_indices_orig.size()")
            continue
    return out


def _simple_schedule(func: tirx.PrimFunc, target: Target) -> IRModule | None:
    """Annotate the root block the way MetaSchedule's ParallelizeVectorizeUnroll rule does and let
    its postprocessor decide which loops can legally be parallel and vectorized."""
    sch = Schedule(IRModule({"main": func.with_attr("global_symbol", "main")}))
    root = sch.get_sblock("root")
    cores = int(target.attrs.get("num-cores", 1))
    sch.annotate(root, "meta_schedule.parallel", 16 * cores)
    sch.annotate(root, "meta_schedule.vectorize", 64)
    if not ms.postproc.RewriteParallelVectorizeUnroll().apply(sch):
        return None
    return sch.mod if count_loops(sch.mod)["parallel"] else None


def apply_default_schedules(mod: IRModule, target: Target,
                            ranker: Ranker | None = None) -> tuple[IRModule, DefaultScheduleStats]:
    """Schedule every PrimFunc that the database did not (no ``tirx.is_scheduled`` attr);
    `ranker`: the family's cost model picks CPU defaults (see `default_schedule`)."""
    stats = DefaultScheduleStats()
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False):
            continue
        if target.kind.name == "cuda":
            sch = dlight_schedule(func, target)
            if sch is None:
                raise ValueError(f"no GPU schedule applies to kernel {gv.name_hint}")
            scheduled = sch.mod
            stats.dlight += 1
        elif (sampled := _sample_design_space(func, target, ranker))[0] is not None:
            scheduled = sampled[0].mod
            stats.sampled += 1
            stats.ranked += int(sampled[1])
        else:
            scheduled = _simple_schedule(func, target)
            if scheduled is None:
                stats.unscheduled += 1
                continue
            stats.simple += 1
        new_func = scheduled["main"].with_attr("tirx.is_scheduled", True)
        # Keep the caller's attributes (global symbol, op pattern), replace only the body.
        new_func = tirx.PrimFunc(new_func.params, new_func.body, new_func.ret_type, func.attrs)
        updates[gv] = new_func.with_attr("tirx.is_scheduled", True)
    for gv, func in updates.items():
        mod[gv] = func
    return mod, stats


def count_loops(mod: IRModule) -> dict[str, int]:
    """Parallel (CPU), thread-bound (GPU) and vectorized loops in a module's PrimFuncs (the
    report's `loops`)."""
    counts = {"parallel": 0, "vectorized": 0, "threads": 0}

    def visit(node: tirx.For) -> None:
        if node.kind == tirx.ForKind.PARALLEL:
            counts["parallel"] += 1
        elif node.kind == tirx.ForKind.VECTORIZED:
            counts["vectorized"] += 1
        elif node.kind == tirx.ForKind.THREAD_BINDING:
            counts["threads"] += 1

    for func in mod.functions.values():
        if isinstance(func, tirx.PrimFunc):
            tvm_ffi.structural_walk(func.body, [(tirx.For, visit)])
    return counts

