"""The benchmarks' models by name: the nets built here (`transformer`, `mobilenetv2`) and the
onnx package's light zoo nets, with their own placeholder weights or well-scaled ones."""

from __future__ import annotations

from pathlib import Path

import onnx
from mobilenet import mobilenet_v2
from transformer import encoder
from weights import he_weights

from tuner.load.model_io import load_model

BUILT = {"transformer": encoder, "mobilenetv2": mobilenet_v2}


def model_spec(name: str, work: Path, weights: str = "zoo") -> str:
    """What `tuner run` is given for `name`: a file written under `work` for the nets built here
    (random weights of their own, `weights` does not apply), else a zoo net with its placeholder
    weights (`zoo`) or the same graph with He-initialized ones (`he`, see weights.py; fp16 needs
    them: the zoo's overflow it)."""
    if name in BUILT:
        path = work / f"{name}.onnx"
        onnx.save(BUILT[name](), str(path))
        return str(path)
    if weights == "he":
        path = work / f"{name}-he.onnx"
        onnx.save(he_weights(load_model(f"zoo:{name}").proto), str(path))
        return str(path)
    return f"zoo:{name}"


def is_built(name: str) -> bool:
    return name in BUILT
