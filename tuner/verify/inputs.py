"""The inputs a module is verified and timed on: the user's (`--inputs file.npz`), else random
ones that the model accepts.

Integer inputs that index a tensor (Gather, GatherElements: embeddings, lookups) are drawn
within the indexed dimension: drawn in [0, 8) they went past a 4-row embedding table, and ONNX
Runtime refused to run ("indices element out of data bounds, idx=6 must be within [-4,3]").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.shape_inference

from ..errors import TunerError
from ..load.model_io import LoadedModel

# Integer inputs that index nothing we can see are drawn in [0, DEFAULT_INT_HIGH).
DEFAULT_INT_HIGH = 8


def _dims(proto: onnx.ModelProto) -> dict[str, list[int]]:
    """Static shapes of initializers and of every value shape inference can tell."""
    try:
        graph = onnx.shape_inference.infer_shapes(proto).graph
    except Exception:  # noqa: BLE001 - a model shape inference rejects keeps what it declares
        graph = proto.graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        shape = value.type.tensor_type.shape
        if value.name not in dims and shape.dim and all(d.HasField("dim_value") for d in shape.dim):
            dims[value.name] = [d.dim_value for d in shape.dim]
    return dims


def index_bounds(proto: onnx.ModelProto) -> dict[str, int]:
    """For each graph input used as Gather / GatherElements indices: the size of the dimension it
    indexes (the smallest, when it indexes several)."""
    inputs = {v.name for v in proto.graph.input}
    dims = _dims(proto)
    bounds: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type not in ("Gather", "GatherElements") or len(node.input) < 2:
            continue
        data, indices = node.input[0], node.input[1]
        if indices not in inputs or data not in dims:
            continue
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        shape = dims[data]
        if -len(shape) <= axis < len(shape) and shape[axis] > 0:
            bounds[indices] = min(bounds.get(indices, shape[axis]), shape[axis])
    return bounds


def random_inputs(shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str], seed: int,
                  bounds: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Floats in [-1, 1); integers in [0, bound) for indices (`bounds`), else [0, 8); booleans."""
    rng = np.random.default_rng(seed)
    bounds = bounds or {}
    out = {}
    for name, shape in shapes.items():
        dtype = dtypes[name]
        if dtype.startswith(("int", "uint")):
            out[name] = rng.integers(0, bounds.get(name, DEFAULT_INT_HIGH), size=shape).astype(dtype)
        elif dtype == "bool":
            out[name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            out[name] = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    return out


def load_inputs(path: Path, model: LoadedModel) -> dict[str, np.ndarray]:
    """The user's inputs from an .npz file (`numpy.savez`), one array per model input by name;
    shapes and dtypes must be the model's (as imported, after `--input-shape`)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            given = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise TunerError(f"--inputs {path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - numpy raises several types for a file that is not an .npz
        raise TunerError(f"--inputs {path}: not a numpy .npz file ({type(exc).__name__})") from None
    missing = [n for n in model.input_shapes if n not in given]
    extra = [n for n in given if n not in model.input_shapes]
    if missing or extra:
        raise TunerError(f"--inputs {path}: the model's inputs are {', '.join(model.input_shapes)}"
                         + (f"; missing {', '.join(missing)}" if missing else "")
                         + (f"; not inputs of the model: {', '.join(extra)}" if extra else ""))
    for name, shape in model.input_shapes.items():
        array, dtype = given[name], model.input_dtypes[name]
        if tuple(array.shape) != tuple(shape) or str(array.dtype) != dtype:
            raise TunerError(f"--inputs {path}: input {name!r} is {array.dtype} {tuple(array.shape)}, "
                             f"the model takes {dtype} {tuple(shape)}")
    return {name: given[name] for name in model.input_shapes}


def verification_inputs(model: LoadedModel, path: Path | None, seed: int) -> tuple[dict[str, np.ndarray], str]:
    """The inputs and a word on where they came from, for the report."""
    if path is not None:  # named, not pathed: a service's report must not show its storage
        return load_inputs(path, model), f"file {path.name}"
    bounds = index_bounds(model.proto)
    note = f"random (seed {seed})"
    if bounds:
        note += "; indices within " + ", ".join(f"{k} < {v}" for k, v in bounds.items())
    return random_inputs(model.input_shapes, model.input_dtypes, seed, bounds), note
