"""Compiled modules of one model checked against ONNX Runtime, then timed with it by turns: the
loop `modules_ab.py` (modules from anywhere) and `defaults_ab.py` (a switch on and off) share.
This VM's speed swings within a minute, so every round times all of them and ORT in alternation
and only the ratios of one round are read."""

from __future__ import annotations

from collections.abc import Callable

from tuner.load.model_io import LoadedModel
from tuner.verify.inputs import verification_inputs
from tuner.verify.measure import ORTModel, TVMModel, compare, interleaved_medians_ms


def verified_by_turns(loaded: LoadedModel, modules: dict[str, TVMModel], threads: int, rounds: int,
                      min_seconds: float, on_round: Callable[[int, dict[str, float], float], None] | None = None,
                      ) -> tuple[dict[str, dict], list[float]]:
    """Per label, the module's largest error against ONNX Runtime on the verification inputs and
    its median ms of each round; and ORT's median ms of each round (ORT on `threads` threads)."""
    inputs = verification_inputs(loaded, None, 0)[0]
    ort = ORTModel(loaded.proto, threads)
    reference = ort.run(inputs)
    out_names = [o.name for o in loaded.proto.graph.output]
    rows: dict[str, dict] = {}
    calls = []
    for label, module in modules.items():
        prepared = module.prepare(inputs)
        rows[label] = {"max_abs_error": compare(module.run(prepared), reference, out_names, 1e-3, 1e-3).max_abs_error,
                       "ms": []}
        calls.append(lambda m=module, a=prepared: m.call(a))
    ort_ms: list[float] = []
    for r in range(rounds):
        *times, ort_time = interleaved_medians_ms([*calls, lambda: ort.run(inputs)], 200, min_seconds)
        for row, t in zip(rows.values(), times):
            row["ms"].append(t)
        ort_ms.append(ort_time)
        if on_round is not None:
            on_round(r, dict(zip(rows, times)), ort_time)
    return rows, ort_ms
