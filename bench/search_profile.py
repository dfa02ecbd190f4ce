"""Where a search's wall time goes: a `tuner.pipeline.run` profiled in this process.

MetaSchedule's search is C++ that calls back into Python for what tuner plugs in (the cost
model, the builder, the runner, the database, the search strategy), so cProfile sees each
callback as a Python call; the evolution itself (sampling, mutation, postprocessors) is the part
of the strategy's `generate_measure_candidates` that its cost-model calls do not account for.
The search runs in this process only with `workers.isolated_search` off (a searcher actor would
hide it): `profiled_settings` turns it off.
"""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.config import Settings

# Part of the search -> (file suffix, function name) of the Python calls that hold it.
PARTS: dict[str, list[tuple[str, str]]] = {
    "search_total": [("meta_schedule/tune.py", "tune_tasks")],
    "candidates": [("schedules/strategy.py", "generate_measure_candidates")],
    "model_predict": [("cost_model/xgb_model.py", "predict"), ("schedules/cost_model.py", "predict")],
    "model_update": [("cost_model/xgb_model.py", "update"), ("schedules/cost_model.py", "update")],
    "features": [("meta_schedule/feature_extractor/feature_extractor.py", "extract_from")],
    "booster_fit": [("cost_model/xgb_model.py", "_train"), ("schedules/cost_model.py", "_train")],
    "booster_predict": [("cost_model/xgb_model.py", "_predict"), ("schedules/cost_model.py", "_predict")],
    "build": [("cluster/ray_backend.py", "build"), ("cluster/local.py", "build")],
    "run_wait": [("cluster/ray_backend.py", "run"), ("cluster/ray_backend.py", "result"),
                 ("cluster/ray_backend.py", "done"), ("cluster/local.py", "run"), ("cluster/local.py", "result"),
                 ("cluster/local.py", "done")],
    "database": [("db/database.py", "commit_tuning_record"), ("db/database.py", "get_top_k"),
                 ("db/database.py", "commit_workload"), ("db/database.py", "has_workload")],
}


def profiled_settings(settings: Settings) -> Settings:
    """`settings` with the search in this process, where cProfile sees it."""
    return settings.model_copy(update={"workers": settings.workers.model_copy(update={"isolated_search": False})})


def profiled(fn: Callable[[], Any], path: Path) -> tuple[Any, dict[str, float]]:
    """`fn()` under cProfile; its stats written to `path`; returns its result and `breakdown`."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        result = fn()
    finally:
        profile.disable()
    profile.dump_stats(str(path))
    return result, breakdown(pstats.Stats(str(path)))


def breakdown(stats: pstats.Stats) -> dict[str, float]:
    """Seconds per part of `PARTS` (cumulative, outermost calls only: a part's own recursion and a
    subclass calling its base are counted once), and `evolution`: the candidates' generation less
    its cost-model predictions."""
    raw: dict = stats.stats  # type: ignore[attr-defined]
    seconds: dict[str, float] = {}
    for part, names in PARTS.items():
        keys = {key for key in raw if any(key[0].endswith(f) and key[2] == n for f, n in names)}
        total = 0.0
        for key in keys:
            _, _, _, cumulative, callers = raw[key]
            # Time reached from another function of the same part is inside that one's already.
            nested = sum(c[3] for caller, c in callers.items() if caller in keys)
            total += cumulative - nested
        seconds[part] = round(total, 3)
    seconds["evolution"] = round(seconds["candidates"] - seconds["model_predict"], 3)
    return seconds


def describe(seconds: dict[str, float]) -> str:
    total = seconds.get("search_total") or 1.0
    order = ["evolution", "model_predict", "features", "booster_predict", "model_update", "booster_fit", "build",
             "run_wait", "database"]
    return f"search {total:.1f} s: " + ", ".join(f"{p} {seconds[p]:.1f} s ({seconds[p] / total:.0%})" for p in order)
