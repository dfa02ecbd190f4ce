"""The MetaSchedule search space and strategy that tuner uses for a target.

One place decides rules, postprocessors, mutators and the evolutionary search's parameters,
so a better space (layouts, micro-kernels) changes here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import tirx
from tvm.ir import IRModule
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target


@dataclass(frozen=True)
class SearchConfig:
    population_size: int = 256
    genetic_num_iters: int = 3
    init_min_unmeasured: int = 32


def _rules_key(target: Target, mod: IRModule | None) -> str:
    kind = target.kind.name
    if kind == "llvm":
        return "llvm"
    if kind == "cuda":
        # Tensor-core tiling (wmma/mma intrinsics) only pays for fp16 kernels on sm_70 and later;
        # its space keeps the plain CUDA rules for everything it does not match.
        return "cuda-tensorcore" if _tensor_cores(target) and mod is not None and _has_fp16(mod) else "cuda"
    raise ValueError(f"no search space for target kind {kind!r}")


def _tensor_cores(target: Target) -> bool:
    arch = str(target.attrs.get("arch", ""))
    return arch.startswith("sm_") and arch[3:].isdigit() and int(arch[3:]) >= 70


def _has_fp16(mod: IRModule) -> bool:
    """Whether any kernel of `mod` touches fp16 data (what tensor-core tiling can match)."""
    return any(isinstance(f, tirx.PrimFunc) and "float16" in f.script() for f in mod.functions.values())


def space_generator(target: Target, mod: IRModule | None = None) -> ms.SpaceGenerator:
    """Post-order application of the target's schedule rules: on CPU tiling, inlining, parallel,
    vectorize, unroll and weight layout rewrite; on CUDA multi-level tiling bound to blocks and
    threads with shared-memory staging (and tensor cores for fp16 kernels of `mod`)."""
    key = _rules_key(target, mod)
    if key == "cuda-tensorcore":
        # Registers the wmma/mma intrinsics its rules name (10-50 s the first time, once per process).
        import tvm.s_tir.tensor_intrin  # noqa: F401
    return ms.space_generator.PostOrderApply(
        sch_rules=key, postprocs=key, mutator_probs=key
    )


def search_strategy(config: SearchConfig) -> ms.SearchStrategy:
    return ms.search_strategy.EvolutionarySearch(
        population_size=config.population_size,
        init_min_unmeasured=min(config.init_min_unmeasured, config.population_size),
        genetic_num_iters=config.genetic_num_iters,
    )


def cost_model(num_cores: int) -> ms.CostModel:
    """XGBoost on MetaSchedule's per-store features, trained online on this run's measurements."""
    return ms.cost_model.XGBModel(
        extractor=ms.feature_extractor.PerStoreFeature(),
        num_tuning_cores=num_cores,
        adaptive_training=True,
        tree_method="auto",
    )
