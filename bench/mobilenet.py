"""MobileNetV2 (Sandler et al., 2018) built with onnx.helper: the MobileNet row of the benchmarks.

The layer table of the paper (width 1.0), batch norms folded into the convolutions' biases as an
exporter leaves them, ReLU6 as ONNX `Clip` with constant bounds (what PyTorch exports, and what
broke fp16 import once). The onnx zoo data shipped with the `onnx` package has no MobileNet.
Weights are He-initialized with a fixed seed, the projections scaled down so that the residual
sums stay in fp16's range as trained batch norms would keep them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (expansion t, output channels c, repeats n, first stride s), the paper's Table 2.
BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2(size: int = 224, classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2 on a (1, 3, size, size) input, logits (1, classes)."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = [numpy_helper.from_array(np.array(0.0, np.float32), "relu6_lo"),
                                     numpy_helper.from_array(np.array(6.0, np.float32), "relu6_hi")]

    def conv(x: str, name: str, c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1,
             relu6: bool = True, gain: float = 1.0) -> str:
        fan_in = (c_in // groups) * k * k
        w = rng.standard_normal((c_out, c_in // groups, k, k)) * np.sqrt(2.0 / fan_in) * gain
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"{name}_w"))
        inits.append(numpy_helper.from_array((rng.standard_normal(c_out) * 0.01).astype(np.float32), f"{name}_b"))
        pad = k // 2
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_conv"], name=f"{name}_conv",
                                      kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=groups))
        if not relu6:
            return f"{name}_conv"
        nodes.append(helper.make_node("Clip", [f"{name}_conv", "relu6_lo", "relu6_hi"], [f"{name}_out"],
                                      name=f"{name}_relu6"))
        return f"{name}_out"

    x = conv("input", "stem", 3, 32, k=3, stride=2)
    c_in = 32
    index = 0
    for t, c, n, s in BLOCKS:
        for i in range(n):
            name = f"b{index}"
            hidden = c_in * t
            h = conv(x, f"{name}_expand", c_in, hidden) if t != 1 else x
            h = conv(h, f"{name}_dw", hidden, hidden, k=3, stride=s if i == 0 else 1, groups=hidden)
            h = conv(h, f"{name}_project", hidden, c, relu6=False, gain=0.5)
            if i > 0 and c_in == c:
                nodes.append(helper.make_node("Add", [x, h], [f"{name}_res"], name=f"{name}_res"))
                h = f"{name}_res"
            x, c_in = h, c
            index += 1
    x = conv(x, "head", c_in, 1280)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flat", axis=1))
    inits.append(numpy_helper.from_array(
        (rng.standard_normal((classes, 1280)) * np.sqrt(1.0 / 1280)).astype(np.float32), "fc_w"))
    inits.append(numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "mobilenet_v2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
