"""Compile a fused Relax module with the tuning database applied and defaults for the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import tvm
from tvm import relax
from tvm.ir import IRModule
from tvm.relax import pipeline as relax_pipeline
from tvm.relax.transform import MetaScheduleApplyDatabase
from tvm.s_tir.meta_schedule import Database
from tvm.target import Target

from tuner.schedules.defaults import DefaultScheduleStats, Ranker, apply_default_schedules, count_loops
from tuner.schedules.lowering import lowering_config

from .storage_plan import lowering_pass as storage_pass


@dataclass
class Compiled:
    executable: Any  # relax.VMExecutable
    loops: dict[str, int] = field(default_factory=dict)
    defaults: DefaultScheduleStats = field(default_factory=DefaultScheduleStats)
    cuda_graph: bool = False  # the kernel launches are captured once and replayed as a CUDA graph


# The VM builtin that a module rewritten for CUDA graphs calls to capture, then replay.
_CUDA_GRAPH_BUILTIN = "vm.builtin.cuda_graph.run_or_capture"


def uses_cuda_graph(executable: Any) -> bool:
    """Whether RewriteCUDAGraph rewrote the module (it does not when nothing is capturable,
    e.g. a module with dynamic shapes)."""
    return _CUDA_GRAPH_BUILTIN in executable.as_text()


def lowering_passes(target: Target, storage: str = "reuse") -> list[tvm.transform.Pass]:
    """Relax lowering after scheduling, as TVM's default pipeline does it for the target;
    ``storage``: a plan `storage_plan.resolve` returned; other than "reuse", activation blocks
    split after TVM's memory plan (by shape, or by size)."""
    # tvm.relax.pipeline's dispatcher reaches these through the backend packages, which (TVM
    # 0.27) do not export them: take them from the pipeline modules themselves.
    if target.kind.name == "llvm":
        from tvm.relax.backend.cpu_generic import pipeline as backend
    elif target.kind.name == "cuda":
        from tvm.relax.backend.cuda import pipeline as backend
    else:
        return [*relax_pipeline.dataflow_lower_passes(target), *relax_pipeline.finalize_passes(target)]
    passes = [*backend.dataflow_lower_passes(target), *backend.finalize_passes(target)]
    if (split := storage_pass(storage)) is not None:
        planned = [p.info.name for p in passes].index("StaticPlanBlockMemory")
        passes.insert(planned + 1, split)
    return passes


def prepack_weights(scheduled: IRModule) -> IRModule:
    """Weights re-laid out once, at compile time, into the layout their kernels' schedules chose.

    A schedule that packs a layout-free weight (MetaSchedule's RewriteLayout) starts its kernel
    with a block that copies the weight into the packed layout: left there, it would run at every
    inference. SplitLayoutRewritePreproc moves those blocks into their own kernels called on the
    weights, and constant folding runs them here, on the constants."""
    return tvm.transform.Sequential([
        relax.transform.SplitLayoutRewritePreproc(),
        relax.transform.FoldConstant(),
        relax.transform.DeadCodeElimination(),
    ])(scheduled)


def schedule_module(fused: IRModule, target: Target, database: Database,
                    ranker: Ranker | None = None) -> tuple[IRModule, DefaultScheduleStats]:
    """Every kernel scheduled (best record, else a default schedule: `ranker`'s pick where
    given), CPU weights pre-packed: the module `relax.build` compiles, whose kernels the
    benchmark also times one by one."""
    with target, database, tvm.transform.PassContext(opt_level=3):
        scheduled = MetaScheduleApplyDatabase()(fused)
        scheduled, defaults = apply_default_schedules(scheduled, target, ranker)
    if target.kind.name == "llvm":
        with target, tvm.transform.PassContext(opt_level=3):
            scheduled = prepack_weights(scheduled)
    return scheduled, defaults


def compile_tuned(fused: IRModule, target: Target, database: Database, cuda_graph: bool = True,
                  ranker: Ranker | None = None, storage: str = "reuse") -> Compiled:
    """Best records from `database`, default schedules for every kernel without one.

    ``cuda_graph``: on CUDA, the module's kernel launches are captured into a CUDA graph at the
    first run and replayed after (TVM's RewriteCUDAGraph): a batch-1 model of small kernels is
    otherwise bound by launch overhead (torch's CUDA graphs beat the module so on an H200).
    ``ranker``: picks the default schedules of kernels without a record (the family's cost model).
    ``storage``: how activations share memory on CPU (`storage_plan.resolve`'s answer)."""
    scheduled, defaults = schedule_module(fused, target, database, ranker)
    loops = count_loops(scheduled)
    config: dict[str, Any] = {}
    if target.kind.name == "cuda":
        # Tensor-core kernels need their own lowering configuration (see schedules/lowering.py);
        # only CUDA modules can hold them.
        config = {**lowering_config(scheduled), "relax.backend.use_cuda_graph": cuda_graph}
    with target, tvm.transform.PassContext(opt_level=3, config=config):
        ex = relax.build(scheduled, target=target, relax_pipeline=tvm.transform.Sequential(lowering_passes(target, storage)))
    return Compiled(executable=ex, loops=loops, defaults=defaults,
                    cuda_graph=target.kind.name == "cuda" and uses_cuda_graph(ex))


def compile_untuned(mod: IRModule, target: Target) -> Any:
    """Stock TVM: the default Relax pipeline, no tuning records (the 'untuned' baseline)."""
    with target:
        return relax.build(mod, target=target)
