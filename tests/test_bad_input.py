"""Every bad input is one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import onnx_models
from tests.conftest import tiny_env
from tuner.errors import TunerError
from tuner.gpus import local_gpus
from tuner.load.model_io import load_model, parse_input_shapes


def tuner_cli(args: list[str], tmp_path: Path, timeout: int = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuner.cli", *args],
        capture_output=True, text=True, env=env or tiny_env(tmp_path), timeout=timeout, cwd=tmp_path,
    )


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    text = " ".join(proc.stderr.split())
    assert "error:" in text
    for fragment in fragments:
        assert fragment in text, text


def test_missing_file(tmp_path: Path) -> None:
    assert_clean_error(tuner_cli(["run", "nope.onnx"], tmp_path), "model file not found: nope.onnx")


def test_not_onnx(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"\x00\xffthis is not a protobuf" * 10)
    assert_clean_error(tuner_cli(["run", "junk.onnx", "--trials", "0"], tmp_path), "is not an ONNX model")


def test_unknown_zoo_name_lists_valid_ones(tmp_path: Path) -> None:
    assert_clean_error(tuner_cli(["run", "zoo:resnet9000"], tmp_path), "unknown zoo model", "squeezenet", "resnet50")


def test_invalid_target_json(tmp_path: Path) -> None:
    onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")
    assert_clean_error(tuner_cli(["run", "m.onnx", "--target", "{kind: llvm"], tmp_path), "invalid target")


def test_the_same_hardware_twice(tmp_path: Path) -> None:
    onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")
    two = '{"kind": "llvm", "num-cores": 2}'
    assert_clean_error(tuner_cli(["run", "m.onnx", "--target", two, "--target", two], tmp_path),
                       "two --target values name the same hardware")


@pytest.mark.skipif(bool(local_gpus()), reason="this machine has a GPU")
def test_cuda_target_without_a_gpu_is_one_clear_error(tmp_path: Path) -> None:
    onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")
    assert_clean_error(tuner_cli(["run", "m.onnx", "--target", "cuda"], tmp_path), "--target cuda: no NVIDIA GPU")
    proc = tuner_cli(["run", "m.onnx", "--target", '{"kind": "cuda", "arch": "sm_90"}', "--trials", "0"], tmp_path)
    assert_clean_error(proc, "needs a local GPU of that arch", "no NVIDIA GPU")


def test_unknown_precision(tmp_path: Path) -> None:
    onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")
    assert_clean_error(tuner_cli(["run", "m.onnx", "--precision", "fp8"], tmp_path), "unknown precision 'fp8'")


def test_an_invalid_setting_names_the_field_and_what_it_accepts(tmp_path: Path) -> None:
    onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")
    env = {**tiny_env(tmp_path), "TUNER_COMPILE__STORAGE_PLAN": "bogus"}
    assert_clean_error(tuner_cli(["run", "m.onnx", "--trials", "0"], tmp_path, env=env),
                       "compile.storage_plan", "'auto', 'reuse', 'per-shape' or 'per-size'", "'bogus'")


def test_unreachable_database(tmp_path: Path) -> None:
    onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")
    proc = tuner_cli(
        ["run", "m.onnx", "--trials", "0", "--db", "postgresql+psycopg://tuner:s3cret@127.0.0.1:1/none"], tmp_path
    )
    assert_clean_error(proc, "cannot reach database")
    assert "s3cret" not in proc.stderr


def test_read_only_database(tmp_path: Path) -> None:
    onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")
    db = tmp_path / "ro.sqlite"
    sqlite3.connect(db).close()
    url = f"sqlite:///file:{db}?mode=ro&uri=true"
    assert_clean_error(tuner_cli(["run", "m.onnx", "--trials", "0", "--db", url], tmp_path), "readonly database")


def test_dynamic_shape_needs_input_shape(tmp_path: Path) -> None:
    path = onnx_models.save(onnx_models.dynamic_batch(), tmp_path / "dyn.onnx")
    with pytest.raises(TunerError, match=r"dynamic dimension \(batch\).*--input-shape x="):
        load_model(str(path))
    loaded = load_model(str(path), parse_input_shapes(["x=2,8"]))
    assert loaded.input_shapes == {"x": (2, 8)}
    with pytest.raises(TunerError, match="does not match"):
        load_model(str(path), parse_input_shapes(["x=2,9"]))
    with pytest.raises(TunerError, match="unknown input"):
        load_model(str(path), parse_input_shapes(["y=2,8"]))
    with pytest.raises(TunerError, match="invalid --input-shape"):
        parse_input_shapes(["x=2,a"])


def test_checker_failure(tmp_path: Path) -> None:
    model = onnx_models.matmul_bias_relu()
    model.graph.node[0].input[1] = "missing_weight"
    path = onnx_models.save(model, tmp_path / "bad.onnx")
    with pytest.raises(TunerError, match="fails the ONNX checker"):
        load_model(str(path))


def test_unsupported_operator_is_named(tmp_path: Path) -> None:
    path = tmp_path / "u.onnx"
    onnx.save(onnx_models.unsupported_op(), str(path))
    with pytest.raises(TunerError, match="MelWeightMatrix"):
        load_model(str(path))


def test_external_data_outside_model_folder_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 64)
    models = tmp_path / "models"
    models.mkdir()
    weight = numpy_helper.from_array(__import__("numpy").zeros((4, 4), "float32"), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "64")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], [weight],
    )
    path = models / "ext.onnx"
    onnx.save(helper.make_model(graph, opset_imports=onnx_models.OPSET), str(path))
    with pytest.raises(TunerError, match="outside the model's folder: refused"):
        load_model(str(path))
