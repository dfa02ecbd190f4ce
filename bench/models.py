"""The benchmarks' models by name: the nets built here (`transformer`, its other sizes
`transformer-s<seq>-h<hidden>`, `mobilenetv2`) and the onnx package's light zoo nets, with their
own placeholder weights or well-scaled ones."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import onnx
from mobilenet import mobilenet_v2
from transformer import encoder
from weights import he_weights

from tuner.load.model_io import load_model

BUILT = {"transformer": encoder, "mobilenetv2": mobilenet_v2}


def builder(name: str) -> Callable[[], onnx.ModelProto] | None:
    """How a net built here is made, None for a zoo net. `transformer-s<seq>-h<hidden>` is the
    encoder at that sequence length and width (64-wide heads, FFN 4x the width, as `transformer`,
    which is s128-h256): kin of the transformer's kernels for a tuning database to hold."""
    if name in BUILT:
        return BUILT[name]
    sized = re.fullmatch(r"transformer-s(\d+)-h(\d+)", name)
    if sized is None:
        return None
    seq, hidden = int(sized[1]), int(sized[2])
    if seq < 1 or hidden < 64 or hidden % 64:
        raise SystemExit(f"{name}: the width must be a multiple of 64 (64-wide heads), the sequence at least 1")
    return lambda: encoder(seq=seq, hidden=hidden, heads=hidden // 64, ffn=4 * hidden)


def model_spec(name: str, work: Path, weights: str = "zoo") -> str:
    """What `tuner run` is given for `name`: a file written under `work` for the nets built here
    (random weights of their own, `weights` does not apply), else a zoo net with its placeholder
    weights (`zoo`) or the same graph with He-initialized ones (`he`, see weights.py; fp16 needs
    them: the zoo's overflow it)."""
    build = builder(name)
    if build is not None:
        path = work / f"{name}.onnx"
        onnx.save(build(), str(path))
        return str(path)
    if weights == "he":
        path = work / f"{name}-he.onnx"
        onnx.save(he_weights(load_model(f"zoo:{name}").proto), str(path))
        return str(path)
    return f"zoo:{name}"


def is_built(name: str) -> bool:
    return builder(name) is not None
