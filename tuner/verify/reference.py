"""The reference a compiled module is verified against: ONNX Runtime, else the same model at a
newer opset in ONNX Runtime, else ONNX's own reference evaluator.

ONNX Runtime has no kernels for some old opsets (opset-6 BatchNormalization, AveragePool, Mul,
Gemm in ONNX's own pytorch-converted tests) that TVM compiles fine: a run used to die building
its reference. The report names the reference used; a model that none can run is refused with
each one's reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import TunerError
from ..rewrite.graph import onnx_opset
from .measure import ORTModel
from ..stages import summary

# Opsets tried, newest first, when ONNX Runtime cannot run the model's own.
CONVERSION_OPSETS = (17, 13)


@dataclass
class Reference:
    name: str  # "onnxruntime", "onnxruntime (converted to opset 17)" or "onnx.reference"
    outputs: list[np.ndarray]
    ort: ORTModel | None  # to time ONNX Runtime; None when it ran no version of the model
    fallback_reason: str | None = None  # why ONNX Runtime did not run the model as given


def _ort(proto: onnx.ModelProto, inputs: dict[str, np.ndarray], threads: int) -> tuple[ORTModel, list[np.ndarray]]:
    model = ORTModel(proto, threads)
    return model, model.run(inputs)


def reference_outputs(proto: onnx.ModelProto, inputs: dict[str, np.ndarray], threads: int = 0) -> Reference:
    reasons = []
    try:
        model, outputs = _ort(proto, inputs, threads)
        return Reference("onnxruntime", outputs, model)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types (NotImplemented, InvalidGraph, Fail)
        first = f"ONNX Runtime: {summary(exc)}"
        reasons.append(first)
    for opset in CONVERSION_OPSETS:
        if opset <= onnx_opset(proto):
            continue
        try:
            converted = onnx.version_converter.convert_version(proto, opset)
            model, outputs = _ort(converted, inputs, threads)
            return Reference(f"onnxruntime (converted to opset {opset})", outputs, model, first)
        except Exception as exc:  # noqa: BLE001 - the converter and ORT raise many types
            reasons.append(f"opset {opset} in ONNX Runtime: {summary(exc)}")
    try:
        from onnx.reference import ReferenceEvaluator

        outputs = ReferenceEvaluator(proto).run(None, inputs)
        return Reference("onnx.reference", [np.asarray(o) for o in outputs], None, first)
    except Exception as exc:  # noqa: BLE001
        reasons.append(f"onnx.reference: {summary(exc)}")
    raise TunerError("no reference could run the model to verify the module against (" + "; ".join(reasons) + ")")
