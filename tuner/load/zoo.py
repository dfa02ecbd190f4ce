"""The model-zoo networks that the `onnx` package ships (no download at run time)."""

from __future__ import annotations

from pathlib import Path

import onnx

ZOO_NAMES = (
    "squeezenet",
    "resnet50",
    "shufflenet",
    "inception_v1",
    "inception_v2",
    "densenet121",
    "bvlc_alexnet",
    "zfnet512",
    "vgg19",
)


def zoo_dir() -> Path:
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def zoo_path(name: str) -> Path:
    from ..errors import TunerError

    if name not in ZOO_NAMES:
        raise TunerError(f"unknown zoo model {name!r}; valid names: {', '.join(ZOO_NAMES)}")
    path = zoo_dir() / f"light_{name}.onnx"
    if not path.is_file():
        raise TunerError(f"zoo model {name!r} is missing from the installed onnx package ({path})")
    return path
