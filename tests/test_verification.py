"""Verification that any ONNX model can pass: a reference when ONNX Runtime cannot run the
model, inputs the model accepts (or the user's own), targets and sizes checked before work
starts, one line (naming the step) for any error, and ONNX's own conformance cases."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import onnx_models
from tuner import cli
from tuner.config import Settings
from tuner.conformance import cases, case_data, fast_settings, run_case
from tuner.errors import TunerError
from tuner.verify.inputs import index_bounds
from tuner.load.model_io import load_model
from tuner.pipeline import RunRequest, run
from tuner.targets import host_cpu_target, parse_target

TARGET = {"kind": "llvm", "num-cores": 2}

# The cases that failed before (old opsets ONNX Runtime cannot run; integer indices), and a
# fixed sample of the other suites. bench/conformance.py runs them all (docs/conformance.md).
SAMPLE = [
    "pytorch-converted/test_BatchNorm2d_eval", "pytorch-converted/test_AvgPool2d_stride",
    "pytorch-converted/test_GLU", "pytorch-operator/test_operator_addmm", "pytorch-converted/test_Embedding",
    "pytorch-operator/test_operator_conv", "pytorch-operator/test_operator_maxpool",
    "pytorch-operator/test_operator_add_broadcast", "pytorch-operator/test_operator_sqrt", "simple/test_sign_model", "simple/test_single_relu_model",
]


@pytest.fixture(scope="module")
def by_name() -> dict:
    return {f"{c.suite}/{c.name}": c for c in cases()}


@pytest.mark.parametrize("name", SAMPLE)
def test_conformance_cases_match_the_tests_own_reference_outputs(name: str, by_name: dict, settings: Settings,
                                                                 tmp_path: Path) -> None:
    outcome = run_case(by_name[name], fast_settings(settings), tmp_path)
    assert outcome.passed, outcome.reason


def test_old_opsets_verify_against_a_converted_model_and_the_report_says_so(by_name: dict, settings: Settings,
                                                                           tmp_path: Path) -> None:
    """ONNX Runtime has no opset-6 BatchNormalization: the run used to die building its reference."""
    case = by_name["pytorch-converted/test_BatchNorm2d_eval"]
    report = run(RunRequest(model=str(case.model), target=TARGET, trials=0, out_dir=tmp_path / "o",
                            db_url=f"sqlite:///{tmp_path / 'db.sqlite'}", measure_untuned=False),
                 fast_settings(settings))
    assert report["verified"] and report["verify"]["reference"] == "onnxruntime (converted to opset 17)"
    assert "ONNX Runtime" in report["verify"]["why_not_onnxruntime"]
    assert report["latency_ms"]["onnxruntime"] > 0  # the converted model is ORT's row


def test_index_inputs_are_drawn_within_the_indexed_dimension(by_name: dict, settings: Settings,
                                                             tmp_path: Path) -> None:
    """test_Embedding indexes a 4-row table: indices drawn in [0, 8) made ONNX Runtime refuse."""
    case = by_name["pytorch-converted/test_Embedding"]
    bounds = index_bounds(load_model(str(case.model)).proto)
    assert list(bounds.values()) == [4]
    report = run(RunRequest(model=str(case.model), target=TARGET, trials=0, out_dir=tmp_path / "o",
                            db_url=f"sqlite:///{tmp_path / 'db.sqlite'}", measure_untuned=False),
                 fast_settings(settings))
    assert report["verified"] and "< 4" in report["verify"]["inputs"]


def test_inputs_from_a_file_are_used_and_checked(by_name: dict, settings: Settings, tmp_path: Path) -> None:
    case = by_name["pytorch-converted/test_Embedding"]
    inputs, _ = case_data(case)
    name = next(iter(inputs))
    good = tmp_path / "good.npz"
    np.savez(good, **inputs)
    report = run(RunRequest(model=str(case.model), target=TARGET, trials=0, out_dir=tmp_path / "o",
                            db_url=f"sqlite:///{tmp_path / 'db.sqlite'}", inputs_path=good, measure_untuned=False),
                 fast_settings(settings))
    assert report["verified"] and report["verify"]["inputs"] == "file good.npz"
    for label, arrays, words in [
        ("renamed", {"other": inputs[name]}, "missing"),
        ("reshaped", {name: inputs[name].reshape(-1)[:1]}, "the model takes"),
        ("retyped", {name: inputs[name].astype(np.float32)}, "the model takes"),
    ]:
        path = tmp_path / f"{label}.npz"
        np.savez(path, **arrays)
        with pytest.raises(TunerError, match=words):
            run(RunRequest(model=str(case.model), target=TARGET, trials=0, out_dir=tmp_path / label,
                           db_url=f"sqlite:///{tmp_path / 'db.sqlite'}", inputs_path=path), settings)
    with pytest.raises(TunerError, match="no such file"):
        run(RunRequest(model=str(case.model), target=TARGET, trials=0, out_dir=tmp_path / "x",
                       db_url=f"sqlite:///{tmp_path / 'db.sqlite'}", inputs_path=tmp_path / "none.npz"), settings)


def test_cpu_dict_targets_are_completed_from_the_host_and_unknown_names_refused() -> None:
    host = host_cpu_target()
    assert parse_target('{"kind": "llvm"}') == host
    assert parse_target('{"kind": "llvm", "mcpu": "haswell"}') == {**host, "mcpu": "haswell"}
    assert parse_target('{"kind": "llvm", "num-cores": 1}')["num-cores"] == 1
    with pytest.raises(TunerError, match="unknown mcpu '; rm -rf /'.*known: .*haswell"):
        parse_target('{"kind": "llvm", "mcpu": "; rm -rf /"}')
    with pytest.raises(TunerError, match="unknown CUDA arch"):
        parse_target('{"kind": "cuda", "arch": "sm_9x"}')


def test_a_model_larger_than_memory_is_refused_before_anything_is_allocated(tmp_path: Path) -> None:
    path = onnx_models.save(onnx_models.dynamic_batch(), tmp_path / "d.onnx")
    with pytest.raises(TunerError, match=r"needs about .* GiB .* GiB available"):
        load_model(str(path), {"x": (10**13, 8)})


def _broken_model(path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    return onnx_models.save(helper.make_model(graph, opset_imports=onnx_models.OPSET), path)


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_error_is_one_line_naming_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture, debug: bool) -> None:
    """A TVM error (its C++ backtrace first, the reason last) in compilation: one line that
    names the step and the reason, exit code 1; `--debug` adds the traceback."""
    import tuner.pipeline

    def fail(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("Traceback (most recent call last):\n  0: tvm::Foo\n  1: tvm::Bar\nCheck failed: (x) is false: bad x")

    monkeypatch.setattr(tuner.pipeline, "compile_tuned", fail)
    monkeypatch.delenv("TUNER_DEBUG", raising=False)
    model = _broken_model(tmp_path / "m.onnx")
    argv = ["tuner", *(["--debug"] if debug else []), "run", str(model), "--trials", "0",
            "--target", '{"kind": "llvm", "num-cores": 2}', "--db", f"sqlite:///{tmp_path / 'db.sqlite'}",
            "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error: compile failed: RuntimeError: Check failed: (x) is false: bad x" in " ".join(err.split())
    assert ("Traceback" in err) == debug


def test_nan_and_infinity_where_the_reference_has_them_agree() -> None:
    """sqrt of a negative input is NaN in every engine (ONNX's test_operator_sqrt): the same
    NaN or infinity agrees; a number where the reference has NaN does not."""
    from tuner.errors import VerificationError
    from tuner.verify.measure import compare

    ref = np.array([1.0, np.nan, np.inf, -np.inf], np.float32)
    assert compare([ref.copy()], [ref], ["y"], 1e-3, 1e-3).max_abs_error == 0.0
    with pytest.raises(VerificationError, match="diverges"):
        compare([np.array([1.0, 2.0, np.inf, -np.inf], np.float32)], [ref], ["y"], 1e-3, 1e-3)


def test_a_case_tvm_itself_cannot_compile_fails_with_one_line(by_name: dict, settings: Settings, tmp_path: Path) -> None:
    """The conformance table's bar: tuner passes whatever plain TVM compiles correctly; what TVM
    cannot compile (PReLU with per-channel slopes asserts in TVM's operator library) fails with
    one line naming the step and where it broke."""
    from tuner.conformance import plain_tvm

    case = by_name["pytorch-converted/test_PReLU_1d_multiparam"]
    assert plain_tvm(case).startswith("fails: AssertionError")
    outcome = run_case(case, fast_settings(settings), tmp_path)
    assert not outcome.passed and outcome.reason == "import failed: AssertionError in nn/elemwise.py:137"
    assert plain_tvm(by_name["pytorch-converted/test_GLU"]) == "matches"
