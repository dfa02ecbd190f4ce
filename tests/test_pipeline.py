"""`tuner run` end to end on small models: numerics, database reuse, outputs contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

from tests import onnx_models
from tuner.config import Settings
from tuner.errors import VerificationError
from tuner.verify.measure import ORTModel
from tuner.load.model_io import load_model
from tuner.pipeline import RunRequest, run

TARGET = {"kind": "llvm", "num-cores": 2}
REPORT_KEYS = {
    "model", "input_shapes", "target", "hardware", "db", "trials", "tasks", "tasks_from_db",
    "tasks_tuned", "tasks_default_schedule", "tuning_seconds", "latency_ms", "speedup",
    "max_abs_error", "verified", "loops", "artifact", "tvm_version", "tuner_version",
}


def _run(path: Path, out: Path, db: str, settings: Settings, trials: int) -> dict:
    return run(RunRequest(model=str(path), target=TARGET, trials=trials, out_dir=out, db_url=db), settings)


def _check_artifact(report: dict, model_path: Path) -> None:
    """model.so loads with tvm.runtime.load_module, runs in a relax VM and matches ONNX Runtime."""
    lib = tvm.runtime.load_module(report["artifact"]["path"])
    vm = relax.VirtualMachine(lib, tvm.cpu())
    loaded = load_model(str(model_path))
    (name, shape), = loaded.input_shapes.items()
    x = np.random.default_rng(7).standard_normal(shape).astype("float32")
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = ORTModel(loaded.proto).run({name: x})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_tune_then_cache_hit(tmp_path: Path, settings: Settings, sqlite_url: str) -> None:
    model = onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "mbr.onnx")
    first = _run(model, tmp_path / "a", sqlite_url, settings, trials=8)
    assert REPORT_KEYS <= first.keys()
    assert first["verified"] and first["max_abs_error"] < 1e-3
    assert first["trials"] >= 1 and first["tasks_tuned"] >= 1 and first["tasks_from_db"] == 0
    assert "@" not in first["db"] or "***" in first["db"]
    assert json.loads((tmp_path / "a" / "report.json").read_text()) == first
    _check_artifact(first, model)
    # Each task's default schedule (the register-blocked micro-kernel) was measured and stored
    # before the search, so a tuned module is never slower than the defaults' one.
    assert first["tasks_default_measured"] == first["tasks_tuned"]
    assert _traces_with(sqlite_url, "tuner.register_blocked") >= 1
    # Its best records and its default were timed again by turns, which picked the one served.
    final = first["final_timing"]
    assert final["tasks"] == 1 and final["candidates"] >= 2 and final["rounds"] == settings.search.final_rounds
    assert _served_has_final_time(sqlite_url)

    second = _run(model, tmp_path / "b", sqlite_url, settings, trials=8)
    assert second["trials"] == 0
    assert second["tasks_from_db"] == first["tasks_tuned"] == second["tasks"]
    assert second["tasks_default_schedule"] == 0
    _check_artifact(second, model)

    # --refine spends a new budget on the cached tasks, the search starting from their records.
    from sqlalchemy import func, select

    from tuner.db.engine import make_engine
    from tuner.db.models import TuningRecord

    def records() -> int:
        with make_engine(sqlite_url).connect() as conn:
            return conn.scalar(select(func.count()).select_from(TuningRecord))

    before = records()
    third = run(RunRequest(model=str(model), target=TARGET, trials=8, out_dir=tmp_path / "c", db_url=sqlite_url,
                           refine=True), settings)
    assert third["trials"] >= 1 and third["tasks_from_db"] == 0 and third["tasks_refined"] == third["tasks"]
    assert records() > before and third["verified"]
    assert third["latency_ms"]["tuned"] > 0


def _served_has_final_time(db_url: str) -> bool:
    from sqlalchemy import select

    from tuner.db import models
    from tuner.db.engine import make_engine

    r = models.TuningRecord
    with make_engine(db_url).connect() as conn:
        served = conn.execute(select(r.final_secs).where(r.check_status == models.CHECK_OK)
                              .order_by(*models.serving_order(r)).limit(1)).scalar_one()
    return served is not None


def _traces_with(db_url: str, text: str) -> int:
    from sqlalchemy import select

    from tuner.db.engine import make_engine
    from tuner.db.models import TuningRecord

    with make_engine(db_url).connect() as conn:
        return sum(text in trace for trace in conn.scalars(select(TuningRecord.trace_json)))


def test_budget_zero_uses_default_schedules(tmp_path: Path, settings: Settings, sqlite_url: str) -> None:
    model = onnx_models.save(onnx_models.small_convnet(), tmp_path / "conv.onnx")
    report = _run(model, tmp_path / "out", sqlite_url, settings, trials=0)
    assert report["trials"] == 0 and report["tasks_tuned"] == 0
    assert report["tasks_default_schedule"] == report["tasks"] > 1
    assert report["loops"]["parallel"] > 0 and report["loops"]["vectorized"] > 0
    assert report["verified"]
    _check_artifact(report, model)


def test_one_job_on_two_targets_writes_a_folder_each(tmp_path: Path, settings: Settings, sqlite_url: str) -> None:
    """Without Ray the targets are done one after the other, each verified on its own."""
    model = onnx_models.save(onnx_models.small_convnet(), tmp_path / "conv.onnx")
    one_core = {"kind": "llvm", "num-cores": 1}
    report = run(RunRequest(model=str(model), target=TARGET, more_targets=[one_core], trials=0,
                            out_dir=tmp_path / "out", db_url=sqlite_url, measure_untuned=False), settings)
    assert [t["target"] for t in report["targets"]] == [TARGET, one_core] and report["verified"]
    keys = [t["hardware"]["key"] for t in report["targets"]]
    assert len(set(keys)) == 2
    for one in report["targets"]:
        folder = Path(one["artifact"]["path"]).parent
        assert folder.parent == tmp_path / "out" and one["hardware"]["key"] in folder.name
        assert json.loads((folder / "report.json").read_text()) == one
        _check_artifact(one, model)
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report


def test_divergent_module_is_never_written(tmp_path: Path, settings: Settings, sqlite_url: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import tuner.pipeline as pipeline

    model = onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")

    class Broken(pipeline.TVMModel):
        def run(self, args):  # noqa: ANN001, ANN202 - simulate a miscompiled kernel
            return [out + 1.0 for out in super().run(args)]

    monkeypatch.setattr(pipeline, "TVMModel", Broken)
    with pytest.raises(VerificationError, match="output 'y' diverges"):
        _run(model, tmp_path / "out", sqlite_url, settings, trials=0)
    assert not (tmp_path / "out" / "model.so").exists()
    assert not (tmp_path / "out" / "report.json").exists()


def test_fallback_default_schedule_parallelizes_and_vectorizes() -> None:
    """The plain rule used when no design-space sample passes the postprocessors."""
    from tvm.script import tirx as T
    from tvm.target import Target

    from tuner.schedules.defaults import _simple_schedule, count_loops

    @T.prim_func(s_tir=True)
    def add_relu(a: T.Buffer((64, 256), "float32"), b: T.Buffer((64, 256), "float32"),
                 c: T.Buffer((64, 256), "float32")) -> None:
        for i, j in T.grid(64, 256):
            with T.sblock("C"):
                vi, vj = T.axis.remap("SS", [i, j])
                c[vi, vj] = T.max(a[vi, vj] + b[vi, vj], T.float32(0))

    scheduled = _simple_schedule(add_relu, Target(TARGET))
    assert scheduled is not None
    loops = count_loops(scheduled)
    assert loops["parallel"] >= 1 and loops["vectorized"] >= 1


def test_other_teams_records_and_warm_start_from_compatible_hardware(
    tmp_path: Path, settings: Settings, sqlite_url: str
) -> None:
    import re

    model = onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "mbr.onnx")

    def run_as(team: str, target: dict, trials: int, out: str) -> dict:
        request = RunRequest(model=str(model), target=target, trials=trials, out_dir=tmp_path / out,
                             db_url=sqlite_url, team=team)
        return run(request, settings)

    vision = run_as("vision", TARGET, 8, "vision")
    assert vision["team"] == "vision" and vision["tasks_warm_started"] == 0

    # Same ISA, one core: another hardware key, so nothing is served, but the search starts
    # from the 2-core records (MetaSchedule logs how many it picked from the database).
    one_core = run_as("speech", {"kind": "llvm", "num-cores": 1}, 8, "one")
    assert one_core["hardware"]["key"] != vision["hardware"]["key"]
    assert one_core["hardware"]["family"] == vision["hardware"]["family"]
    assert one_core["tasks_from_db"] == 0
    assert one_core["tasks_warm_started"] == one_core["tasks"] == vision["tasks_tuned"]
    logs = "".join(p.read_text() for p in (tmp_path / "one" / "logs").rglob("*.log"))
    picked = [int(n) for n in re.findall(r"Picked top (\d+) candidate\(s\) from database", logs)]
    assert picked and picked[0] > 0

    speech = run_as("speech", TARGET, 0, "speech")
    assert speech["tasks_from_db"] == speech["tasks_from_other_teams"] == vision["tasks_tuned"]
    own = run_as("vision", TARGET, 0, "again")
    assert own["tasks_from_db"] == vision["tasks_tuned"] and own["tasks_from_other_teams"] == 0


def test_the_pipeline_and_cli_load_ray_only_when_a_run_uses_it() -> None:
    """A run without Ray (`--ray-address off`, a GPU box with TVM carried but no Ray) must not
    need Ray installed: the pipeline and CLI modules import it only on the Ray paths."""
    import subprocess
    import sys

    probe = "import sys, tuner.pipeline, tuner.cli, tuner.service.app; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_an_fp16_module_that_overflows_is_refused_with_the_reason(tmp_path: Path, settings: Settings) -> None:
    """The light zoo's squeezenet reaches 6.5e9 inside (its placeholder weights): in fp16 that is
    Inf, then NaN. The error says so, instead of "max abs error nan", and writes nothing."""
    request = RunRequest(model="zoo:squeezenet", target=TARGET, trials=0, out_dir=tmp_path / "out",
                         db_url=f"sqlite:///{tmp_path / 'db.sqlite'}", precision="fp16")
    with pytest.raises(VerificationError, match=r"holds 1000 NaN/Inf value\(s\) of 1000 where ONNX Runtime's are all "
                                                r"finite \(in fp16, values somewhere in the model beyond fp16's range"):
        run(request, settings)
    assert not (tmp_path / "out" / "model.so").exists()


def test_finite_divergence_is_still_reported_as_an_error_size() -> None:
    from tuner.verify.measure import compare

    ref = [np.ones((2, 3), dtype="float32")]
    assert compare([ref[0] + 1e-4], ref, ["y"], 1e-3, 1e-3).verified
    with pytest.raises(VerificationError, match=r"output 'y' diverges from ONNX Runtime: max abs error 0.5"):
        compare([ref[0] + 0.5], ref, ["y"], 1e-3, 1e-3)
    nan = ref[0].copy()
    nan[0, 0] = np.nan
    with pytest.raises(VerificationError, match=r"output 'y' holds 1 NaN/Inf value\(s\) of 6 where"):
        compare([nan], ref, ["y"], 1e-3, 1e-3)


@pytest.mark.parametrize("opset", [6, 13])
def test_relu6_as_clip_imports_in_fp16_and_verifies(tmp_path: Path, sqlite_url: str, settings: Settings,
                                                    opset: int) -> None:
    """ReLU6 exported as Clip (bounds as inputs, or attributes before opset 11): fp16 import
    once crashed in ToMixedPrecision ("Expected TensorType, but got R.Callable")."""
    model = onnx_models.save(onnx_models.conv_relu6(opset), tmp_path / "m.onnx")
    for precision in ("fp32", "fp16"):
        report = run(RunRequest(model=str(model), target=TARGET, trials=0, out_dir=tmp_path / precision,
                                db_url=sqlite_url, precision=precision), settings)
        assert report["verified"] and report["precision"] == precision
