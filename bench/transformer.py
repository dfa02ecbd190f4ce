"""A BERT-style encoder built with onnx.helper: the transformer model of the GPU benchmark.

Standard ONNX ops only (MatMul, Softmax, LayerNormalization, Erf-based GELU), so TVM's importer,
ONNX Runtime and onnx2torch all read it; weights are random with a fixed seed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def encoder(seq: int = 128, hidden: int = 256, heads: int = 4, ffn: int = 1024, layers: int = 2,
            seed: int = 0) -> onnx.ModelProto:
    """`layers` post-norm encoder layers on a (1, seq, hidden) input."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    head = hidden // heads

    def weight(name: str, shape: tuple[int, ...], scale: float = 0.05) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name: str, values: list[int] | np.ndarray, dtype: type = np.int64) -> str:
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def linear(x: str, name: str, n_in: int, n_out: int) -> str:
        y = node("MatMul", [x, weight(f"{name}_w", (n_in, n_out))], f"{name}_mm")
        return node("Add", [y, weight(f"{name}_b", (n_out,), 0.01)], f"{name}_out")

    def layer_norm(x: str, name: str) -> str:
        gamma = const(f"{name}_g", np.ones(hidden), np.float32)
        beta = const(f"{name}_beta", np.zeros(hidden), np.float32)
        return node("LayerNormalization", [x, gamma, beta], f"{name}_out", axis=-1, epsilon=1e-5)

    split_shape = const("split_shape", [1, seq, heads, head])
    merge_shape = const("merge_shape", [1, seq, hidden])
    scale = const("attn_scale", np.array(1.0 / np.sqrt(head)), np.float32)
    sqrt2 = const("sqrt2", np.array(np.sqrt(2.0)), np.float32)
    one = const("one", np.array(1.0), np.float32)
    half = const("half", np.array(0.5), np.float32)

    x = "input"
    for i in range(layers):
        p = f"l{i}"
        q, k, v = (node("Transpose", [node("Reshape", [linear(x, f"{p}_{n}", hidden, hidden), split_shape],
                                            f"{p}_{n}_split")], f"{p}_{n}_heads", perm=perm)
                   for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])))
        scores = node("Mul", [node("MatMul", [q, k], f"{p}_qk"), scale], f"{p}_scores")
        attn = node("MatMul", [node("Softmax", [scores], f"{p}_probs", axis=-1), v], f"{p}_ctx")
        merged = node("Reshape", [node("Transpose", [attn], f"{p}_ctx_t", perm=[0, 2, 1, 3]), merge_shape], f"{p}_merged")
        x = layer_norm(node("Add", [x, linear(merged, f"{p}_o", hidden, hidden)], f"{p}_res1"), f"{p}_ln1")
        h = linear(x, f"{p}_ff1", hidden, ffn)
        erf = node("Erf", [node("Div", [h, sqrt2], f"{p}_gelu_div")], f"{p}_gelu_erf")
        gelu = node("Mul", [node("Mul", [h, node("Add", [erf, one], f"{p}_gelu_add")], f"{p}_gelu_mul"), half], f"{p}_gelu")
        x = layer_norm(node("Add", [x, linear(gelu, f"{p}_ff2", ffn, hidden)], f"{p}_res2"), f"{p}_ln2")
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, seq, hidden])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, seq, hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
