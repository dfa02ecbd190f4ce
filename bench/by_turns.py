"""Compiled modules of one model checked against ONNX Runtime, then timed with it by turns: the
loop `modules_ab.py` (modules from anywhere) and `defaults_ab.py` (a switch on and off) share.
This VM's speed swings within a minute, so every round times all of them and ORT in alternation
and only the ratios of one round are read; each round also records which cache the two cores
share then (`core_latency.py`: the host moves the vCPUs, and the ratios differ between the states)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tuner.load.model_io import LoadedModel
from tuner.verify.inputs import verification_inputs
from tuner.verify.measure import ORTModel, TVMModel, compare, interleaved_medians_ms

from core_latency import round_trip_ns


@dataclass
class ByTurns:
    """Per label, the module's largest error against ONNX Runtime and its median ms of each
    round; ORT's median ms of each round; the cores' round trip (ns) measured before each."""

    modules: dict[str, dict]
    onnxruntime_ms: list[float] = field(default_factory=list)
    core_round_trip_ns: list[float | None] = field(default_factory=list)


def verified_by_turns(loaded: LoadedModel, modules: dict[str, TVMModel], threads: int, rounds: int,
                      min_seconds: float, on_round: Callable[[int, dict[str, float], float, float | None], None]
                      | None = None) -> ByTurns:
    """The modules checked against ONNX Runtime on the verification inputs, then timed with it
    by turns, `rounds` times (ORT on `threads` threads)."""
    inputs = verification_inputs(loaded, None, 0)[0]
    ort = ORTModel(loaded.proto, threads)
    reference = ort.run(inputs)
    out_names = [o.name for o in loaded.proto.graph.output]
    result = ByTurns({})
    calls = []
    for label, module in modules.items():
        prepared = module.prepare(inputs)
        result.modules[label] = {"max_abs_error": compare(module.run(prepared), reference, out_names, 1e-3,
                                                          1e-3).max_abs_error, "ms": []}
        calls.append(lambda m=module, a=prepared: m.call(a))
    for r in range(rounds):
        core_ns = round_trip_ns()
        *times, ort_time = interleaved_medians_ms([*calls, lambda: ort.run(inputs)], 200, min_seconds)
        for row, t in zip(result.modules.values(), times):
            row["ms"].append(t)
        result.onnxruntime_ms.append(ort_time)
        result.core_round_trip_ns.append(core_ns)
        if on_round is not None:
            on_round(r, dict(zip(result.modules, times)), ort_time, core_ns)
    return result


def round_line(r: int, times: dict[str, float], ort_time: float, core_ns: float | None) -> str:
    """One round as the A/B scripts print it."""
    core = "" if core_ns is None else f" (cores' round trip {core_ns:.0f} ns)"
    return f"[{r}] " + ", ".join(f"{k} {t:.3f}" for k, t in times.items()) + f", ORT {ort_time:.3f} ms{core}"
