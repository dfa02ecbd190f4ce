"""The MetaSchedule search space and strategy that tuner uses for a target.

One place decides rules, postprocessors, mutators and the evolutionary search's parameters,
so a better space (layouts, micro-kernels) changes here and nowhere else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import tvm
from tvm import tirx
from tvm.ir import IRModule
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from .channel_split import AffineChannelSplit
from .intrinsics import load_tensor_intrinsics
from .lowering import lowering_config
from .register_blocking import RegisterBlockedGemm
from .strategy import ContainedSearch, Kindred
from .winograd import register_rules as register_winograd_rules

# Relax legalizes pooling into kernels annotated `schedule_rule = "meta_schedule.pool_max"`
# (and these others), asking MetaSchedule for a custom rule that TVM 0.27 does not ship.
# MetaSchedule then logs "Unknown schedule rule" on stderr, about a dozen times per zoo model,
# drops the annotation and schedules the kernel with the target's ordinary rules.
POOL_RULES = ("pool_max", "pool_avg", "adaptive_pool_max", "adaptive_pool_avg")


def _ordinary_rules(sch: tvm.s_tir.Schedule, block: tvm.s_tir.schedule.SBlockRV) -> list:
    """What MetaSchedule does for an unknown custom rule, without the warning."""
    sch.unannotate(block, "schedule_rule")
    return [sch]


@functools.cache
def register_pool_rules() -> None:
    """Register the pooling rules as `_ordinary_rules` for CPU and CUDA where none exists
    (once per process; every design space calls this)."""
    for key in ("cpu", "cuda"):
        for name in POOL_RULES:
            full = f"s_tir.meta_schedule.{key}.meta_schedule.{name}"
            if tvm.get_global_func(full, allow_missing=True) is None:
                tvm.register_global_func(full, _ordinary_rules)


@dataclass(frozen=True)
class SearchConfig:
    population_size: int = 256
    genetic_num_iters: int = 3
    init_min_unmeasured: int = 32
    # Each task's first round: random valid schedules (MetaSchedule's ReplayTrace) instead of an
    # evolution steered by a cost model that has not seen one measurement (see search_strategy).
    random_first_round: bool = False
    # The share of each round's candidates drawn at random from the initial population instead
    # of picked by the cost model (MetaSchedule's eps_greedy; its default). The count is
    # rounded down: 0.05 of a round of 4-16 trials is none.
    eps_greedy: float = 0.05


def _rules_key(target: Target, mod: IRModule | None, tensor_cores: bool) -> str:
    kind = target.kind.name
    if kind == "llvm":
        return "llvm"
    if kind == "cuda":
        # Tensor-core tiling (wmma/mma intrinsics) only pays for fp16 kernels on sm_70 and later;
        # its space keeps the plain CUDA rules for everything it does not match.
        wanted = tensor_cores and has_tensor_cores(target) and mod is not None and _has_fp16(mod)
        return "cuda-tensorcore" if wanted else "cuda"
    raise ValueError(f"no search space for target kind {kind!r}")


def has_tensor_cores(target: Target) -> bool:
    """Whether `target` is a CUDA GPU with tensor cores (sm_70 and later)."""
    if target.kind.name != "cuda":
        return False
    arch = str(target.attrs.get("arch", ""))
    return arch.startswith("sm_") and arch[3:].isdigit() and int(arch[3:]) >= 70


def _has_fp16(mod: IRModule) -> bool:
    """Whether any kernel of `mod` touches fp16 data (what tensor-core tiling can match)."""
    return any(isinstance(f, tirx.PrimFunc) and "float16" in f.script() for f in mod.functions.values())


def wants_tensor_cores(target: Target, mod: IRModule) -> bool:
    """Whether `space_generator(target, mod)` is the tensor-core space."""
    return _rules_key(target, mod, True) == "cuda-tensorcore"


def space_generator(target: Target, mod: IRModule | None = None, tensor_cores: bool = True,
                    default: bool = False) -> ms.SpaceGenerator:
    """Post-order application of the target's schedule rules: on CPU register-blocked
    micro-kernels for GEMM-like kernels (register_blocking.py) and division-free iteration of
    elementwise kernels that gather channels (channel_split.py) beside MetaSchedule's tiling,
    inlining, parallel, vectorize, unroll and weight layout rewrite; on CUDA multi-level tiling
    bound to blocks and threads with shared-memory staging (and tensor cores for fp16 kernels of
    `mod`, unless `tensor_cores` is False).

    ``default``: the space a task's default schedule is drawn from: on CPU a GEMM-like kernel
    gets only its micro-kernel, with the analytic register block, and a channel gather only its
    split schedule."""
    key = _rules_key(target, mod, tensor_cores)
    # MetaSchedule's TuneContext imports the tensor intrinsics (its rules name them) the slow
    # way: import them first, once per process, in seconds.
    load_tensor_intrinsics()
    register_pool_rules()
    register_winograd_rules()
    rules: str | list = key
    if key == "llvm":
        stock = ms.ScheduleRule.create("llvm")
        if default:
            # A default schedule is one sample, unmeasured, compiled in every cache-miss run: no
            # random compute-at, which can move a reduction into its consumer's loop (resnet50's
            # softmax then summed its 1000 exponentials once per output element: 0.85 ms for 1000
            # values), and a modest explicit unroll instead of a random one of up to 512 steps
            # (one fp16 squeezenet conv drew 512 and took LLVM 209 s to compile).
            stock = [_default_unroll(r) for r in stock if not isinstance(r, ms.schedule_rule.RandomComputeLocation)]
        rules = [RegisterBlockedGemm(keep_stock=not default), AffineChannelSplit(keep_stock=not default), *stock]
    return ms.space_generator.PostOrderApply(
        sch_rules=rules, postprocs=key, mutator_probs=key
    )


def _default_unroll(rule: ms.ScheduleRule) -> ms.ScheduleRule:
    if not isinstance(rule, ms.schedule_rule.ParallelizeVectorizeUnroll):
        return rule
    return ms.schedule_rule.ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=64,
                                                       unroll_max_steps=[16], unroll_explicit=True)


def design_spaces(context: ms.TuneContext) -> list[tvm.s_tir.Schedule] | None:
    """The task's design spaces, drawn once with the context's own random state; None when
    they cannot be generated.

    TVM 0.27's tensor-core tiling raises a ScheduleError ("not a stage pipeline", in compute-at)
    on some padded fp16 convolutions, depending on the random draw, and raised inside the task
    scheduler that error ends the whole tuning run. Probing a clone is not enough: a clone draws
    other random choices than the context the scheduler uses (seen on an H100: resnet50 fp16
    passed the probe and then failed). So the spaces are drawn here, checked, and handed to the
    scheduler as they are (`fixed_space`)."""
    try:
        return list(context.generate_design_space())
    except Exception:  # noqa: BLE001 - TVM raises ScheduleError, TVMError, ...
        return None


def fixed_space(spaces: list[tvm.s_tir.Schedule], target: Target, mod: IRModule, tensor_cores: bool) -> ms.SpaceGenerator:
    """A space generator that returns `spaces` (drawn by `space_generator(target, mod,
    tensor_cores)`) with that generator's postprocessors and mutators, so the search explores
    exactly the spaces that were checked."""
    key = _rules_key(target, mod, tensor_cores)
    return ms.space_generator.ScheduleFn(lambda _sch: [sch.copy() for sch in spaces],
                                         sch_rules=[], postprocs=key, mutator_probs=key)


def sample_builds(spaces: list[tvm.s_tir.Schedule], context: ms.TuneContext) -> bool:
    """Whether a schedule of the design spaces passes the postprocessors and compiles.

    A space whose candidates do not build spends the search's budget on build errors: before
    schedules/lowering.py, every tensor-core candidate of an fp16 kernel accumulating in fp32 did
    ("tvm_access_ptr element type must match the source buffer", on an H100 and here). One
    compile of one sample (about a second), lowered as the builders lower it, tells."""
    try:
        for space in spaces:
            sch = space.copy()
            if all(p.apply(sch) for p in context.space_generator.postprocs):
                with tvm.transform.PassContext(config=lowering_config(sch.mod)):
                    tvm.compile(sch.mod, target=context.target)
                return True
    except Exception:  # noqa: BLE001 - any build error
        return False
    return True  # no sample passed the postprocessors: leave it to the search


# Random draws per candidate of a random first round before it gives up on that candidate
# (about 1 in 30-100 random CUDA conv schedules passes the postprocessors).
REPLAY_FAILS = 256


def search_strategy(config: SearchConfig, report: Callable[[str, str], None] | None = None,
                    stop: Callable[[], bool] | None = None,
                    untrained: Callable[[], bool] | None = None,
                    kindred: Kindred | None = None) -> ms.SearchStrategy:
    """Evolutionary search whose errors end its own task only (see strategy.py); `report`
    hears of each task so ended; once `stop()` is true, every task's search ends.

    ``config.random_first_round``: each task's first round is random valid schedules, and so is
    every later round while `untrained()` says the cost model still scores at random. On CUDA
    97-99% of random samples fail VerifyGPUCode (resnet50's convolutions: a virtual-thread
    tile over 8, shared memory over 48 KB), so the evolutionary search's initial population
    (init_min_unmeasured valid ones) took ~12 of a round's ~16 s per task, and with an untrained
    cost model the evolution after it picks at random anyway; ReplayTrace draws a round's
    few candidates in 3-7 s. On CPU the evolution of such a round cost ~2.5 s per task.

    ``kindred``: a task without records of its own starts from the schedules of kindred
    kernels (strategy.py)."""
    first = (lambda: ms.search_strategy.ReplayTrace(max_fail_count=REPLAY_FAILS)) if config.random_first_round else None
    return ContainedSearch(lambda: ms.search_strategy.EvolutionarySearch(
        population_size=config.population_size,
        init_min_unmeasured=min(config.init_min_unmeasured, config.population_size),
        genetic_num_iters=config.genetic_num_iters,
        eps_greedy=config.eps_greedy,
    ), report, stop, first, untrained, kindred)

