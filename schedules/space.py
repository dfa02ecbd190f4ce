"""The MetaSchedule search space and strategy that tuner uses for a target.

One place decides rules, postprocessors, mutators and the evolutionary search's parameters,
so a better space (layouts, micro-kernels) changes here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.s_tir import meta_schedule as ms
from tvm.target import Target


@dataclass(frozen=True)
class SearchConfig:
    population_size: int = 256
    genetic_num_iters: int = 3
    init_min_unmeasured: int = 32


def _rules_key(target: Target) -> str:
    kind = target.kind.name
    if kind == "llvm":
        return "llvm"
    raise ValueError(f"no search space for target kind {kind!r}")


def space_generator(target: Target) -> ms.SpaceGenerator:
    """Post-order application of the target's schedule rules (tiling, inlining, parallel,
    vectorize, unroll, layout rewrite for weights)."""
    key = _rules_key(target)
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
