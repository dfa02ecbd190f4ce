"""Well-scaled random weights for the zoo models of the fp16 benchmark rows.

The `light` model-zoo nets shipped with `onnx` carry placeholder weights (built from
ConstantOfShape), so their activations explode: up to 6.5e9 in squeezenet and 9.4e18 in
resnet50 (ONNX Runtime, fp32), far beyond fp16's 65504, and any fp16 module of them is NaN.
Latency does not depend on weight values, so fp16 rows use the same graph with He-initialized
convolutions and identity batch norms, and a classifier scaled to logits of about unit size
(softmax outputs that fp16 rounding cannot flip): the kernels are the zoo's, the numbers stay in
fp16's range, and verification against ONNX Runtime fp32 means something.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper


def he_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of `model` with Conv/Gemm weights drawn He-normal (biases zero) and every
    BatchNormalization set to the identity (scale 1, bias 0, mean 0, variance 1)."""
    model = copy.deepcopy(model)
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in model.graph.initializer}
    new: dict[str, np.ndarray] = {}

    def shape(name: str) -> tuple[int, ...]:
        return tuple(inits[name].dims)

    for node in model.graph.node:
        inputs = [x for x in node.input if x in inits]
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            w = shape(node.input[1])
            new[node.input[1]] = rng.standard_normal(w) * np.sqrt(2.0 / int(np.prod(w[1:])))
            if len(node.input) > 2 and node.input[2] in inits:
                new[node.input[2]] = np.zeros(shape(node.input[2]))
        elif node.op_type == "Gemm" and len(node.input) > 1 and node.input[1] in inits:
            w = shape(node.input[1])
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            new[node.input[1]] = rng.standard_normal(w) * np.sqrt(1.0 / w[1 if trans_b else 0])
            if len(node.input) > 2 and node.input[2] in inits:
                new[node.input[2]] = np.zeros(shape(node.input[2]))
        elif node.op_type == "BatchNormalization" and len(inputs) == 4:
            for name, value in zip(node.input[1:5], (1.0, 0.0, 0.0, 1.0)):
                new[name] = np.full(shape(name), value)
    _replace(model, new)
    _unit_logits(model, rng)
    return model


def _replace(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name in values:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(values[tensor.name].astype(np.float32), tensor.name))


def _unit_logits(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    """Divide each Gemm weight by the RMS of the Gemm's input on a random input (one ONNX
    Runtime run), so the logits are of unit size instead of the thousands that residual sums reach."""
    import onnxruntime as ort

    inits = {t.name: t for t in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm" and len(n.input) > 1 and n.input[1] in inits]
    if not gemms:
        return
    probe = copy.deepcopy(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n.input[0]) for n in gemms)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: rng.uniform(-1, 1, [d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
             for i in session.get_inputs()}
    rms = [float(np.sqrt(np.mean(np.square(x)))) or 1.0 for x in session.run(None, feeds)]
    _replace(model, {n.input[1]: numpy_helper.to_array(inits[n.input[1]]) / r for n, r in zip(gemms, rms)})
