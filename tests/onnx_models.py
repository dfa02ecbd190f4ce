"""Small ONNX models built in code for the tests (random weights, so numerics are meaningful)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)


def uniform_initializer(rng: np.random.Generator, name: str, shape: tuple[int, ...],
                        scale: float = 0.3) -> onnx.TensorProto:
    """A weight drawn from U(-scale, scale)."""
    return numpy_helper.from_array(rng.uniform(-scale, scale, shape).astype(np.float32), name)


def matmul_bias_relu(m: int = 16, k: int = 64, n: int = 32, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["biased"]),
            helper.make_node("Relu", ["biased"], ["y"]),
        ],
        "matmul_bias_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [_init(rng, "w", (k, n)), _init(rng, "b", (n,))],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def small_convnet(channels: int = 8, size: int = 16, seed: int = 0) -> onnx.ModelProto:
    """conv3x3 + relu, conv3x3 + relu, global pool, gemm: a few distinct tasks."""
    rng = np.random.default_rng(seed)
    c = channels
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c2"], ["r2"]),
            helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
        ],
        "small_convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [
            _init(rng, "w1", (c, 3, 3, 3)), _init(rng, "b1", (c,)),
            _init(rng, "w2", (c, c, 3, 3)), _init(rng, "b2", (c,)),
            _init(rng, "wf", (10, c)), _init(rng, "bf", (10,)),
        ],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def conv_bn_residual(channels: int = 16, size: int = 10, seed: int = 0, biased: bool = False) -> onnx.ModelProto:
    """A resnet block as the zoo's resnet50 spells it: Conv without bias, BatchNormalization,
    Relu, and the residual as a `Sum`; 10x10 so that register blocks start mid-row.

    ``biased``: Convs with a bias before their BatchNormalization (shufflenet's first one)."""
    rng = np.random.default_rng(seed)
    c = channels

    def bn(prefix: str) -> list[onnx.TensorProto]:
        return [numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), f"{prefix}_scale"),
                _init(rng, f"{prefix}_bias", (c,)), _init(rng, f"{prefix}_mean", (c,)),
                numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), f"{prefix}_var")]

    def bn_node(x: str, prefix: str, y: str) -> onnx.NodeProto:
        return helper.make_node("BatchNormalization", [x, *(f"{prefix}_{n}" for n in ("scale", "bias", "mean", "var"))], [y])

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", *(["cb1"] if biased else [])], ["c1"], pads=[1, 1, 1, 1]),
            bn_node("c1", "bn1", "n1"),
            helper.make_node("Relu", ["n1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2", *(["cb2"] if biased else [])], ["c2"], pads=[1, 1, 1, 1]),
            bn_node("c2", "bn2", "n2"),
            helper.make_node("Sum", ["n2", "x"], ["s"]),
            helper.make_node("Relu", ["s"], ["y"]),
        ],
        "conv_bn_residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, size, size])],
        [_init(rng, "w1", (c, c, 3, 3)), _init(rng, "w2", (c, c, 3, 3)), *bn("bn1"), *bn("bn2"),
         *([_init(rng, "cb1", (c,)), _init(rng, "cb2", (c,))] if biased else [])],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def grouped_conv(channels: int = 64, groups: int = 4, size: int = 8, kernel: int = 1, seed: int = 0) -> onnx.ModelProto:
    """A grouped convolution with bias and relu: 1x1 as shufflenet's, or with `groups` equal
    to `channels` and a 3x3 kernel, depthwise."""
    rng = np.random.default_rng(seed)
    c, pad = channels, kernel // 2
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], group=groups, pads=[pad] * 4),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "grouped_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, size, size])],
        [_init(rng, "w", (c, c // groups, kernel, kernel)), _init(rng, "b", (c,))],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def conv_relu6(opset: int = 17, channels: int = 8, size: int = 8, seed: int = 0) -> onnx.ModelProto:
    """conv3x3 + ReLU6 as ONNX Clip, as MobileNets export it: bounds as constant inputs
    (opset >= 11) or as attributes (older opsets). Weights scaled so that outputs cross 0 and 6."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = [numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 2.0, "w")]
    if opset >= 11:
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
        clip = helper.make_node("Clip", ["c", "lo", "hi"], ["y"])
    else:
        clip = helper.make_node("Clip", ["c"], ["y"], min=0.0, max=6.0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), clip],
        "conv_relu6",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, size, size])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def dynamic_batch() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def unsupported_op() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MelWeightMatrix", ["r", "r", "r", "r", "r"], ["y"])],
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def external_data_outside() -> onnx.ModelProto:
    """A model whose weight points at a file outside any model folder (path traversal)."""
    tensor = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.float_data[:]
    for key, value in (("location", "../../../../etc/passwd"), ("offset", "0"), ("length", "16")):
        tensor.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    # onnx 1.23 stamps IR 14 by default; ONNX Runtime before 1.32 reads at most IR 13.
    model.ir_version = min(model.ir_version, 10)
    onnx.save(model, str(path))
    return path


def pools(channels: int = 4, size: int = 8) -> onnx.ModelProto:
    """MaxPool and GlobalAveragePool: kernels Relax annotates with MetaSchedule pooling rules."""
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "pools",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 1, 1])],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def large_average_pools(channels: int = 8, size: int = 7) -> onnx.ModelProto:
    """A 1x1 convolution whose ReLU outputs (~2000 on average) sum to beyond fp16's 65504 over a 7x7
    window, averaged by AveragePool and GlobalAveragePool (resnet50's classifier head, with the
    activations that He-initialized weights give it)."""
    weight = numpy_helper.from_array(np.full((channels, 4, 1, 1), 4000.0, np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("AveragePool", ["r"], ["a"], kernel_shape=[size, size]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Add", ["a", "g"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "large_average_pools",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 1, 1])],
        initializer=[weight],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def residual_layer_norms(seq: int = 16, hidden: int = 32, seed: int = 0) -> onnx.ModelProto:
    """Two post-norm residual blocks (MatMul + bias, residual Add, LayerNormalization), the
    residual stream of a transformer encoder; the first residual is the model's input."""
    rng = np.random.default_rng(seed)
    nodes, inits, stream = [], [], "x"
    for i in range(2):
        nodes += [
            helper.make_node("MatMul", [stream, f"w{i}"], [f"mm{i}"]),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"biased{i}"]),
            helper.make_node("Add", [f"biased{i}", stream], [f"res{i}"]),
            helper.make_node("LayerNormalization", [f"res{i}", f"g{i}", f"beta{i}"], [f"ln{i}"], axis=-1),
        ]
        inits += [_init(rng, f"w{i}", (hidden, hidden)), _init(rng, f"b{i}", (hidden,)),
                  numpy_helper.from_array(1 + rng.standard_normal(hidden).astype(np.float32) * 0.1, f"g{i}"),
                  _init(rng, f"beta{i}", (hidden,))]
        stream = f"ln{i}"
    graph = helper.make_graph(
        nodes, "residual_layer_norms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, hidden])],
        [helper.make_tensor_value_info(stream, TensorProto.FLOAT, [1, seq, hidden])], inits,
    )
    return helper.make_model(graph, opset_imports=OPSET)
