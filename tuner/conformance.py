"""ONNX's own conformance cases (shipped in the `onnx` package under backend/test/data) through
the whole pipeline with `--trials 0`, each module checked against the case's reference outputs
(not ONNX Runtime's). `bench/conformance.py` runs them all and writes docs/conformance.md; the
tests run a fixed sample.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .config import Settings
from .errors import TunerError
from .stages import summary

# The suites the onnx package ships (its wheel carries no `node` folder: onnx 1.23 on PyPI).
SUITES = ("node", "pytorch-converted", "pytorch-operator", "simple", "light")


def data_root() -> Path:
    return Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data"


@dataclass
class Case:
    suite: str
    name: str
    folder: Path

    @property
    def model(self) -> Path:
        if self.suite == "light":
            return self.folder
        return self.folder / "model.onnx"


@dataclass
class Outcome:
    case: str
    passed: bool
    reason: str = ""  # why it did not pass, one line
    reference: str = ""  # what the pipeline verified against (its own check, before ours)


def cases(suites: tuple[str, ...] = SUITES) -> list[Case]:
    """Every case of the suites, in name order (light: the zoo models, checked against their
    own test data in `light/`'s folders when present)."""
    root = data_root()
    found = []
    for suite in suites:
        base = root / suite
        if not base.is_dir():
            continue
        if suite == "light":
            found += [Case(suite, p.stem.removeprefix("light_"), p) for p in sorted(base.glob("*.onnx"))]
            continue
        found += [Case(suite, p.name, p) for p in sorted(base.iterdir()) if (p / "model.onnx").is_file()]
    return found


def _tensor(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def _tensors(folder: Path, prefix: str) -> list[np.ndarray]:
    files = sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
    return [_tensor(f) for f in files]


def case_data(case: Case) -> tuple[dict[str, np.ndarray], list[np.ndarray]] | None:
    """The case's first test set: inputs by the model's input names, expected outputs; None
    when it has none. A light (zoo) model ships only its expected output: its input is what
    ONNX's backend test runner feeds it (`arange / size`, float32)."""
    model = onnx.load(str(case.model), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in initializers]
    if case.suite == "light":
        expected = case.folder.with_name(f"{case.folder.stem}_output_0.pb")
        if not expected.is_file():
            return None
        from onnx.backend.test.runner import Runner

        inputs = [Runner.generate_dummy_data(v, seed=0, name=case.name, random=False) for v in values]
        return dict(zip([v.name for v in values], inputs)), [_tensor(expected)]
    folder = case.folder / "test_data_set_0"
    if not folder.is_dir():
        return None
    inputs = _tensors(folder, "input")
    if len(inputs) != len(values):
        return None
    return dict(zip([v.name for v in values], inputs)), _tensors(folder, "output")


def _usable(case: Case) -> tuple[dict[str, np.ndarray], list[np.ndarray]] | str:
    """The case's inputs and expected outputs, or why it cannot be run."""
    data = case_data(case)
    if data is None:
        return "no test data set with one array per model input"
    if any(a.dtype == object for a in data[0].values()):
        return "string inputs"
    return data


def _mismatch(got: list[np.ndarray], expected: list[np.ndarray], atol: float, rtol: float) -> str:
    """Why the outputs differ from the expected ones ("" when they agree)."""
    if len(got) != len(expected):
        return f"{len(got)} outputs, the test expects {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        if g.shape != e.shape:
            return f"output {i} has shape {g.shape}, expected {e.shape}"
        if e.dtype.kind in "fc":
            ok = np.allclose(g.astype(np.float64), e.astype(np.float64), atol=atol, rtol=rtol, equal_nan=True)
        else:
            ok = np.array_equal(g, e)
        if not ok:
            err = float(np.max(np.abs(g.astype(np.float64) - e.astype(np.float64)))) if g.size else 0.0
            return f"output {i} differs from the test's reference: max abs error {err:.3g}"
    return ""


def _outputs(module: object, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A compiled module (`model.so` path or executable) run on the CPU with `inputs`."""
    from .verify.measure import TVMModel

    model = TVMModel(module, list(inputs))
    return model.run(model.prepare(inputs))


def run_case(case: Case, settings: Settings, work: Path, atol: float = 1e-3, rtol: float = 1e-3) -> Outcome:
    """The pipeline at `--trials 0` on the case's inputs; its module against the expected outputs."""
    from .pipeline import RunRequest, run
    from .targets import host_cpu_target

    label = f"{case.suite}/{case.name}"
    data = _usable(case)
    if isinstance(data, str):
        return Outcome(label, False, data)
    inputs, expected = data
    out = work / case.name
    out.mkdir(parents=True, exist_ok=True)
    npz = out / "inputs.npz"
    np.savez(npz, **inputs)
    try:
        report = run(RunRequest(model=str(case.model), target=host_cpu_target(), trials=0, out_dir=out,
                                db_url=f"sqlite:///{work / 'conformance.sqlite'}", measure_untuned=False,
                                inputs_path=npz, input_shapes={k: tuple(v.shape) for k, v in inputs.items()},
                                ray_address="off"), settings)
    except TunerError as exc:
        return Outcome(label, False, str(exc).splitlines()[0].replace(str(case.model), "the model")[:300])
    except Exception as exc:  # noqa: BLE001 - every case gets an outcome
        return Outcome(label, False, summary(exc))
    reference = report["verify"]["reference"]
    try:
        got = _outputs(Path(report["artifact"]["path"]), inputs)
    except Exception as exc:  # noqa: BLE001
        return Outcome(label, False, f"the written module failed to run: {summary(exc)}", reference)
    reason = _mismatch(got, expected, atol, rtol)
    return Outcome(label, not reason, reason, reference)


def plain_tvm(case: Case, atol: float = 1e-3, rtol: float = 1e-3) -> str:
    """What TVM alone makes of the case (`from_onnx` + `relax.build`, no tuner): "matches",
    "wrong output", or "fails: <reason>". tuner must pass every case this says "matches" for."""
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    data = _usable(case)
    if isinstance(data, str):
        return "no test data" if data.startswith("no test data") else f"fails: {data}"
    inputs, expected = data
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            mod = from_onnx(onnx.load(str(case.model)), shape_dict={k: v.shape for k, v in inputs.items()})
            got = _outputs(relax.build(mod, target="llvm"), inputs)
    except Exception as exc:  # noqa: BLE001 - the reason is the answer
        return f"fails: {summary(exc)}"
    return "wrong output" if _mismatch(got, expected, atol, rtol) else "matches"


def fast_settings(settings: Settings) -> Settings:
    """Conformance needs outputs, not timings: one timed run, no waiting for quiet CPUs."""
    measure = settings.measure.model_copy(update={"model_runs": 1, "model_min_seconds": 0.0, "quiet_wait_s": 0.0})
    return settings.model_copy(update={"measure": measure})


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="tuner-conformance-"))
