"""A fused model compiled with default schedules, exported, loaded and run against ONNX Runtime:
the end-to-end check of the CPU graph rewrites' tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm.ir import IRModule
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tuner.compile import compile_tuned
from tuner.verify.inputs import random_inputs
from tuner.verify.measure import ORTModel, TVMModel
from tuner.load.model_io import LoadedModel


def assert_matches_ort(loaded: LoadedModel, fused: IRModule, target: Target, tmp_path: Path,
                       rtol: float = 1e-4, atol_of_max: float = 1e-4) -> None:
    """`fused` compiled (no records: default schedules) computes what ONNX Runtime computes from
    `loaded`, within `rtol` and `atol_of_max` times the largest output value."""
    compiled = compile_tuned(fused, target, ms.database.MemoryDatabase())
    path = tmp_path / "m.so"
    compiled.executable.export_library(str(path))
    inputs = random_inputs(loaded.input_shapes, loaded.input_dtypes, 0)
    module = TVMModel(tvm.runtime.load_module(str(path)), list(loaded.input_shapes))
    got = module.run(module.prepare(inputs))
    want = ORTModel(loaded.proto).run(inputs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol_of_max * float(np.abs(w).max()))
