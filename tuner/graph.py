"""ONNX to Relax, and the graph-level passes shared by task extraction and compilation.

Task extraction and compilation must see identical fused kernels, or database keys would not
match: both go through `fuse_for_tuning`.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir import IRModule
from tvm.relax import pipeline as relax_pipeline
from tvm.target import Target

from .errors import TunerError
from .model_io import LoadedModel


def import_onnx(model: LoadedModel) -> IRModule:
    """Relax module with weights bound as constants, constants folded, dead code removed."""
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(model.proto, shape_dict=dict(model.input_shapes), keep_params_in_input=False)
    except Exception as exc:  # the importer raises many types; users need its message
        text = str(exc).strip().splitlines()
        raise TunerError(f"TVM could not import {model.name}: {text[-1] if text else type(exc).__name__}") from None
    return tvm.transform.Sequential(
        [relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()]
    )(mod)


def fusion_passes(target: Target) -> list[tvm.transform.Pass]:
    """Legalize and fuse operators into TIR kernels (the tasks), as MetaSchedule expects."""
    try:
        dispatch = list(relax_pipeline.library_dispatch_passes(target))
    except (ValueError, AttributeError):
        dispatch = []
    return [
        *dispatch,
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]


def fuse_for_tuning(mod: IRModule, target: Target) -> IRModule:
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(fusion_passes(target))(mod)
