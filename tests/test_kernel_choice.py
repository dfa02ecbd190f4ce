"""A record that won alone but loses inside the model is not served (tuner/compile/kernel_choice.py),
and a module with records never goes out slower than its defaults-only twin."""

from __future__ import annotations

from pathlib import Path

import pytest
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Schedule
from tvm.target import Target

from tests import onnx_models
from tuner.compile import kernel_choice
from tuner.config import CompileSettings, Settings
from tuner.load.model_io import load_model
from tuner.pipeline import RunRequest, open_database, run
from tuner.rewrite.graph import fuse_for_tuning, import_onnx

TARGET = {"kind": "llvm", "num-cores": 2}


def test_each_task_sums_its_kernels_under_their_built_names() -> None:
    names = {"fused_matmul": 0, "fused_matmul1": 0, "softmax": 1, "mean": 2}
    with_records = {"fused_matmul_prepacked": 1.0, "fused_matmul1_prepacked": 1.0, "softmax": 0.2,
                    "mean": 0.1, "vm.builtin.alloc_tensor": 0.5}
    with_defaults = {"fused_matmul": 1.5, "fused_matmul1": 1.5, "softmax": 0.1}
    assert kernel_choice.task_ms(with_records, names) == {0: 2.0, 1: 0.2, 2: 0.1}
    slower, records_ms, defaults_ms = kernel_choice.slower_records([0, 1, 2], names, with_records, with_defaults)
    # Task 0 is faster with its records (2.0 against 3.0), task 1 slower; task 2's default run was not seen.
    assert slower == [1]
    assert records_ms == pytest.approx(2.2) and defaults_ms == pytest.approx(3.1)


def _serve_a_slow_record(model: Path, sqlite_url: str) -> str:
    """The model's matmul served a naive schedule (serial scalar loops) that claims to have
    run in a nanosecond and passed its check: the search's fastest by its own time."""
    target = Target(TARGET)
    fused = fuse_for_tuning(import_onnx(load_model(str(model), {})), target, True)
    task = ms.relax_integration.extract_tasks(fused, target)[0]
    mod = task.dispatched[0]
    db = open_database(sqlite_url, TARGET)
    db.commit_tuning_record(ms.database.TuningRecord(Schedule(mod).trace, db.commit_workload(mod), [1e-9], target,
                                                     ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
    db.record_checked(db.fastest_unchecked(mod).record_id, "ok", "a correct, slow schedule")
    assert db.best(mod, traceless_defaults=False).default is False
    return task.task_name


@pytest.fixture
def choosing(settings: Settings) -> Settings:
    return settings.model_copy(update={"compile": CompileSettings(in_model_choice=True)})


def test_a_record_slower_in_the_model_than_its_default_is_left_out(
        tmp_path: Path, choosing: Settings, sqlite_url: str) -> None:
    model = onnx_models.save(onnx_models.matmul_bias_relu(m=64, k=256, n=256), tmp_path / "m.onnx")
    victim = _serve_a_slow_record(model, sqlite_url)
    report = run(RunRequest(model=str(model), target=TARGET, trials=0, out_dir=tmp_path / "out",
                            db_url=sqlite_url, measure_untuned=False), choosing)
    assert report["verified"]
    choice = report["kernel_choice"]
    assert choice["candidates"] == 1 and choice["defaults_kept"] == [victim]
    assert choice["records_ms"] > 2 * choice["defaults_ms"]
    # The database still serves the record (another model may place it better); this module does not.
    assert report["tasks_default_schedule"] == 0
    assert report["latency_ms"]["defaults_only"] is None  # the module served is the defaults-only one


def test_the_defaults_only_module_is_served_when_it_is_faster(
        tmp_path: Path, choosing: Settings, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the per-kernel choice keeps a slow record (here: told to keep every record), the
    model-level timing still serves the faster defaults-only twin."""
    model = onnx_models.save(onnx_models.matmul_bias_relu(m=64, k=256, n=256), tmp_path / "m.onnx")
    _serve_a_slow_record(model, sqlite_url)
    monkeypatch.setattr("tuner.pipeline.slower_records", lambda candidates, *a: ([], 0.0, 0.0))
    report = run(RunRequest(model=str(model), target=TARGET, trials=0, out_dir=tmp_path / "out",
                            db_url=sqlite_url, measure_untuned=False), choosing)
    assert report["verified"] and report["served_defaults_only"]
    latency = report["latency_ms"]
    assert latency["with_records"] > 2 * latency["tuned"] and latency["defaults_only"] == latency["tuned"]
