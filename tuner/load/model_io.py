"""Load, check and normalize an ONNX model before it reaches TVM.

Every rejection here is a one-line TunerError: users hand us arbitrary files.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_model, uses_external_data

from ..errors import TunerError
from .zoo import zoo_path

# Ops whose value is not a function of their inputs: never folded.
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli"}


@dataclass
class LoadedModel:
    name: str
    proto: onnx.ModelProto
    input_shapes: dict[str, tuple[int, ...]]
    input_dtypes: dict[str, str]
    source: str
    notes: list[str] = field(default_factory=list)


def parse_input_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
    """``NAME=1,3,224,224`` items into a dict."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.split(",")) if sep and name else None
        except ValueError:
            shape = None
        if not shape or any(d <= 0 for d in shape):
            raise TunerError(f"invalid --input-shape {spec!r}: expected NAME=D1,D2,... with positive ints")
        shapes[name] = shape
    return shapes


def _check_external_data(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external tensors whose location escapes the model's folder (path traversal)."""
    base = base_dir.resolve()
    for tensor in all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if os.path.isabs(location) or (target != base and base not in target.parents):
            raise TunerError(
                f"tensor {tensor.name!r} refers to external data {location!r} outside the "
                f"model's folder: refused"
            )
        if not target.is_file():
            raise TunerError(f"tensor {tensor.name!r}: external data file {location!r} not found")


def all_tensors(model: onnx.ModelProto) -> list[TensorProto]:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                tensors.append(attr.t)
    return tensors


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate nodes whose inputs are all constant (the zoo builds weights with ConstantOfShape).

    Also drops graph inputs that are really initializers (ONNX IR < 4 lists weights as inputs),
    so that only true inputs remain.
    """
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    model.ir_version = max(model.ir_version, 4)
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in consts]
    del graph.input[:]
    graph.input.extend(real_inputs)
    kept = []
    for node in graph.node:
        foldable = node.op_type not in _NONDETERMINISTIC and node.domain in ("", "ai.onnx") and (
            node.op_type == "Constant" or (node.input and all(x in consts or x == "" for x in node.input))
        )
        if not foldable:
            kept.append(node)
            continue
        sub = helper.make_graph(
            [node], "fold", [],
            [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output],
            [numpy_helper.from_array(consts[x], x) for x in node.input if x],
        )
        outputs = ReferenceEvaluator(helper.make_model(sub, opset_imports=model.opset_import)).run(None, {})
        for name, value in zip(node.output, outputs):
            consts[name] = np.asarray(value)
    used = {x for node in kept for x in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items() if k in used)
    return model


def _unsupported_ops(model: onnx.ModelProto) -> list[str]:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    return sorted({n.op_type for n in model.graph.node if n.op_type not in known})


_DTYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64",
           TensorProto.INT64: "int64", TensorProto.INT32: "int32", TensorProto.INT8: "int8",
           TensorProto.UINT8: "uint8", TensorProto.BOOL: "bool"}


def _resolve_inputs(model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]]
                    ) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    names = [i.name for i in model.graph.input]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TunerError(f"--input-shape names unknown input(s) {', '.join(unknown)}; inputs are: {', '.join(names)}")
    shapes, dtypes = {}, {}
    for inp in model.graph.input:
        ttype = inp.type.tensor_type
        if ttype.elem_type not in _DTYPES:
            raise TunerError(f"input {inp.name!r} has unsupported element type {TensorProto.DataType.Name(ttype.elem_type)}")
        dtypes[inp.name] = _DTYPES[ttype.elem_type]
        if inp.name in overrides:
            declared = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
            given = overrides[inp.name]
            if len(declared) != len(given) or any(d not in (None, g) for d, g in zip(declared, given)):
                raise TunerError(f"--input-shape {inp.name}={','.join(map(str, given))} does not match the model's shape {declared}")
            shapes[inp.name] = given
            continue
        dims = []
        for d in ttype.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            else:
                label = d.dim_param or "?"
                raise TunerError(
                    f"input {inp.name!r} has a dynamic dimension ({label}): give its shape with "
                    f"--input-shape {inp.name}=1,3,224,224"
                )
        shapes[inp.name] = tuple(dims)
    return shapes, dtypes


def load_model(spec: str, input_shapes: dict[str, tuple[int, ...]] | None = None) -> LoadedModel:
    """A model path or ``zoo:NAME``, checked, constant-folded, with static input shapes."""
    if spec.startswith("zoo:"):
        path = zoo_path(spec[4:])
        name = spec[4:]
    else:
        path = Path(spec)
        name = path.stem
        if not path.exists():
            raise TunerError(f"model file not found: {spec}")
        if not path.is_file():
            raise TunerError(f"not a file: {spec}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as exc:
        raise TunerError(f"{spec} is not an ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise TunerError(f"{spec} is not an ONNX model (no graph nodes)")
    _check_external_data(model, path.parent)
    if any(uses_external_data(t) for t in all_tensors(model)):
        load_external_data_for_model(model, str(path.parent))
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        if "in initializer but not in graph input" not in first:  # legal before IR 4
            raise TunerError(f"{spec} fails the ONNX checker: {first}") from None
    model = fold_constants(model)
    missing = _unsupported_ops(model)
    if missing:
        raise TunerError(f"{spec} uses operator(s) that TVM's ONNX importer does not support: {', '.join(missing)}")
    shapes, dtypes = _resolve_inputs(model, input_shapes or {})
    check_memory(name, model, shapes, dtypes)
    return LoadedModel(name=name, proto=model, input_shapes=shapes, input_dtypes=dtypes, source=str(path))


# A run holds its inputs several times over (numpy, the module's tensors, ONNX Runtime's copy,
# outputs of about their size) and its weights about twice (the model, the compiled constants).
INPUT_COPIES, WEIGHT_COPIES = 4, 2


def check_memory(name: str, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                 dtypes: dict[str, str]) -> None:
    """Refuse, before anything is allocated, a model whose inputs and weights cannot fit in this
    machine's available memory (a 10^13-float input once reached numpy's MemoryError in a
    service worker, after a few GiB had been allocated for real)."""
    import numpy as np
    import psutil

    inputs = sum(math.prod(shape) * np.dtype(dtypes[n]).itemsize for n, shape in shapes.items())
    weights = sum(math.prod(t.dims) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
                  for t in model.graph.initializer)
    need = INPUT_COPIES * inputs + WEIGHT_COPIES * weights
    available = psutil.virtual_memory().available
    if need > available:
        raise TunerError(f"{name} needs about {need / 2**30:.1f} GiB (inputs {inputs / 2**30:.2f} GiB, weights "
                         f"{weights / 2**30:.2f} GiB) and this machine has {available / 2**30:.1f} GiB available")
