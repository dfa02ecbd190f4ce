"""Input shapes and GFLOPs of the zoo models, from ONNX shape inference (no weights loaded)."""

from __future__ import annotations

from math import prod

import onnx
from onnx import shape_inference

from .zoo import ZOO_NAMES, zoo_path


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            shapes[vi.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def model_gflops(model: onnx.ModelProto) -> float:
    """Multiply-adds x 2 of Conv, Gemm and MatMul: the layers that dominate these nets."""
    shapes = _shapes(model)
    flops = 0
    for node in model.graph.node:
        if node.op_type == "Conv" and node.output[0] in shapes and node.input[1] in shapes:
            w = shapes[node.input[1]]  # (Cout, Cin/groups, kh, kw)
            flops += 2 * prod(shapes[node.output[0]]) * prod(w[1:])
        elif node.op_type in ("Gemm", "MatMul") and node.output[0] in shapes and node.input[0] in shapes:
            k = shapes[node.input[0]][-1]
            trans_a = any(a.name == "transA" and a.i for a in node.attribute)
            if trans_a:
                k = shapes[node.input[0]][-2]
            flops += 2 * prod(shapes[node.output[0]]) * k
    return flops / 1e9


def zoo_table() -> list[dict]:
    rows = []
    for name in ZOO_NAMES:
        path = zoo_path(name)
        model = onnx.load(str(path))
        inits = {i.name for i in model.graph.initializer}
        inputs = {
            i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input
            if i.name not in inits
        }
        rows.append({
            "name": name,
            "inputs": inputs,
            "gflops": round(model_gflops(model), 3),
            "megabytes": round(path.stat().st_size / 1e6, 2),
        })
    return rows
