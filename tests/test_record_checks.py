"""A wrong schedule is never served: every record is checked before it can be, and a model that
fails verification anyway is bisected to the records to blame."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tvm
from sqlalchemy import select
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Schedule
from tvm.script import tirx as T
from tvm.target import Target

from tests import onnx_models
from tests.conftest import tiny_env
from tests.test_bad_input import assert_clean_error, tuner_cli
from tests.tir_helpers import TARGET, matmul
from tuner.verify.blame import TooManyAttempts, find_culprits
from tuner.cluster.kernel_check import check_kernel, index_bounds, random_arguments
from tuner.config import Settings
from tuner.db import models
from tuner.db.engine import make_engine
from tuner.rewrite.graph import fuse_for_tuning, import_onnx
from tuner.load.model_io import load_model
from tuner.pipeline import RunRequest, open_database, run

TOLERANCES = {"float32": (1e-3, 1e-3), "float16": (2e-2, 2e-2)}


def _corrupt(sch: Schedule, block) -> None:  # noqa: ANN001 - a block of sch
    """Stage the block's output in an int8 buffer: a schedule that builds, runs fast and
    computes garbage, as a miscompiled kernel does."""
    sch.cache_write(block, 0, "global")
    sch.unsafe_set_dtype(block, 0, "int8")


def _last_block(sch: Schedule):  # noqa: ANN202 - the block that writes the kernel's output
    return sch.get_child_blocks(sch.get_sblock("root"))[-1]


@T.prim_func(s_tir=True)
def _gather(table: T.Buffer((50, 4), "float32"), ids: T.Buffer((8,), "int64"), out: T.Buffer((8, 4), "float32")) -> None:
    for i, j in T.grid(8, 4):
        with T.sblock("gather"):
            vi, vj = T.axis.remap("SS", [i, j])
            out[vi, vj] = table[ids[vi], vj]


def test_the_kernel_check_passes_a_correct_schedule_and_names_what_a_wrong_one_got_wrong() -> None:
    mod = matmul(32)
    good = Schedule(mod)
    good.parallel(good.get_loops(good.get_sblock("C"))[0])
    ok, detail = check_kernel(tvm.ir.save_json(good.mod), tvm.ir.save_json(mod), TARGET, TOLERANCES)
    assert ok, detail
    bad = Schedule(mod)
    _corrupt(bad, bad.get_sblock("C"))
    ok, detail = check_kernel(tvm.ir.save_json(bad.mod), tvm.ir.save_json(mod), TARGET, TOLERANCES)
    assert not ok and detail.startswith("wrong output: max abs error") and "in C (float32" in detail


def test_random_indices_stay_within_what_they_index() -> None:
    assert index_bounds(_gather) == {"ids": 50}
    ids = random_arguments(_gather, seed=3)[1]
    assert ids.dtype == "int64" and 0 <= ids.min() and ids.max() < 50 and len(set(ids.tolist())) > 1
    mod = tvm.IRModule({"main": _gather})
    assert check_kernel(tvm.ir.save_json(mod), tvm.ir.save_json(mod), TARGET, TOLERANCES)[0]


def test_bisection_finds_every_culprit_within_its_budget() -> None:
    calls: list[set[int]] = []

    def verifies_without(culprits: set[int]):  # noqa: ANN202
        def verifies(withheld: set[int]) -> bool:
            calls.append(withheld)
            return culprits <= withheld
        return verifies

    assert find_culprits(list(range(16)), verifies_without({11})) == [11]
    assert len(calls) <= 6  # all withheld, 4 halvings, the confirmation
    assert sorted(find_culprits(list(range(16)), verifies_without({2, 13}))) == [2, 13]
    assert find_culprits([0, 1, 2], lambda withheld: False) is None  # the defaults fail too
    with pytest.raises(TooManyAttempts):
        find_culprits(list(range(64)), verifies_without({1, 20, 40, 60}), max_attempts=8)


@derived_object
class CorruptOutput(ms.postproc.PyPostproc):
    """A postprocessor that makes every searched candidate compute garbage: the search measures
    them as usual (fast), and their traces replay the corruption wherever they are applied."""

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        pass

    def apply(self, sch: Schedule) -> bool:
        _corrupt(sch, _last_block(sch))
        return True

    def clone(self) -> CorruptOutput:
        return CorruptOutput()


def _records(db_url: str) -> list[models.TuningRecord]:
    with make_engine(db_url).connect() as conn:
        return list(conn.execute(select(models.TuningRecord)).all())


def test_wrong_candidates_of_the_search_are_rejected_never_served_and_the_model_verifies(
        tmp_path: Path, settings: Settings, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import tuner.search.tuning as tuning

    real_space = tuning.fixed_space

    def corrupted_space(spaces, target, mod, tensor_cores):  # noqa: ANN001, ANN202
        stock = real_space(spaces, target, mod, tensor_cores)
        return ms.space_generator.ScheduleFn(lambda _sch: [s.copy() for s in spaces], sch_rules=[],
                                             postprocs=[*stock.postprocs, CorruptOutput()],
                                             mutator_probs=stock.mutator_probs)

    monkeypatch.setattr(tuning, "fixed_space", corrupted_space)
    # No default schedule is measured: the search's (wrong) candidates are the task's only records.
    monkeypatch.setattr(tuning, "default_schedule", lambda *args, **kwargs: None)
    model = onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")
    report = run(RunRequest(model=str(model), target=TARGET, trials=8, out_dir=tmp_path / "out",
                            db_url=sqlite_url, measure_untuned=False), settings)
    assert report["verified"] and report["trials"] >= 4
    checks = report["record_checks"]
    assert checks["rejected_wrong_output"] == checks["checked"] == settings.checks.max_per_task
    assert report["records_rejected_wrong_output"] == checks["rejected_wrong_output"]
    assert all(bad["reason"].startswith("wrong output: max abs error") for bad in checks["rejected"])
    # Never served: the task compiled with its default schedule.
    assert report["tasks_tuned"] == 0 and report["tasks_default_schedule"] == report["tasks"] == 1
    rows = _records(sqlite_url)
    assert {r.check_status for r in rows if r.check_status} == {"wrong"}
    assert all("wrong output" in r.check_detail for r in rows if r.check_status)


def _task_mod(model_path: Path, index: int = 0) -> tvm.IRModule:
    target = Target(TARGET)
    fused = fuse_for_tuning(import_onnx(load_model(str(model_path), {})), target, True)
    return ms.relax_integration.extract_tasks(fused, target)[index].dispatched[0]


def _export_records(directory: Path, mod: tvm.IRModule, wrong_secs: float, right_secs: float) -> None:
    """A MetaSchedule JSON database holding a wrong record (the faster) and a right one."""
    json_db = ms.database.JSONDatabase(work_dir=str(directory))
    workload = json_db.commit_workload(mod)
    args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    for secs, corrupt in ((wrong_secs, True), (right_secs, False)):
        sch = Schedule(mod)
        block = _last_block(sch)
        sch.parallel(sch.get_loops(block)[0])
        if corrupt:
            _corrupt(sch, block)
        json_db.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [secs], Target(TARGET), args))


def test_an_imported_wrong_record_is_rejected_on_first_use_and_the_right_one_served(
        tmp_path: Path, settings: Settings, sqlite_url: str) -> None:
    from tuner.db.transfer import import_database

    model = onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")
    logs = tmp_path / "logs"
    logs.mkdir()
    _export_records(logs, _task_mod(model), wrong_secs=1e-7, right_secs=1e-3)
    db = open_database(sqlite_url, TARGET)
    import_database(db.engine, logs, hardware=db.provenance.hardware_key, default_team="default")

    report = run(RunRequest(model=str(model), target=TARGET, trials=0, out_dir=tmp_path / "out",
                            db_url=sqlite_url, measure_untuned=False), settings)
    assert report["verified"]
    assert report["record_checks"]["rejected_wrong_output"] == 1 and report["record_checks"]["passed"] == 1
    assert report["tasks_from_db"] == 1 and report["tasks_default_schedule"] == 0  # the right record served
    by_secs = {r.mean_run_secs: r for r in _records(sqlite_url)}
    assert by_secs[1e-7].check_status == "wrong" and "max abs error" in by_secs[1e-7].check_detail
    assert by_secs[1e-3].check_status == "ok" and by_secs[1e-3].checked_tvm == tvm.__version__[:32]
    # The next run finds both checked: nothing to check again.
    again = run(RunRequest(model=str(model), target=TARGET, trials=0, out_dir=tmp_path / "again",
                           db_url=sqlite_url, measure_untuned=False), settings)
    assert again["record_checks"]["checked"] == 0 and again["tasks_default_schedule"] == 0


def test_bisection_blames_the_record_that_breaks_the_model_and_returns_it_verified_without(
        tmp_path: Path, settings: Settings, sqlite_url: str) -> None:
    """A wrong record that its check passed (a check can miss what real activations expose):
    the model fails verification, the bisection finds the record, marks it, and the run returns
    the module built without it."""
    model = onnx_models.save(onnx_models.small_convnet(), tmp_path / "conv.onnx")
    first = run(RunRequest(model=str(model), target=TARGET, trials=16, out_dir=tmp_path / "a",
                           db_url=sqlite_url, measure_untuned=False), settings)
    assert first["verified"] and first["tasks_tuned"] >= 2
    target = Target(TARGET)
    fused = fuse_for_tuning(import_onnx(load_model(str(model), {})), target, True)
    tasks = ms.relax_integration.extract_tasks(fused, target)
    db = open_database(sqlite_url, TARGET)
    victim = next(t for t in tasks if db.best(t.dispatched[0]) is not None)
    mod = victim.dispatched[0]
    db.record_final_times(mod, {})  # served by search times again: the fastest, the corrupt one below
    sch = Schedule(mod)
    _corrupt(sch, _last_block(sch))
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(mod), [1e-9], target,
                                                     ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
    bad_id = db.fastest_unchecked(mod).record_id
    db.record_checked(bad_id, "ok", "a check that missed it")

    report = run(RunRequest(model=str(model), target=TARGET, trials=0, out_dir=tmp_path / "b",
                            db_url=sqlite_url, measure_untuned=False), settings)
    assert report["verified"]
    assert [b["record_id"] for b in report["records_blamed"]] == [bad_id]
    assert report["tasks_withheld"] == [victim.task_name] and report["records_rejected_wrong_output"] == 1
    assert "right without it" in report["records_blamed"][0]["reason"]
    row = next(r for r in _records(sqlite_url) if r.id == bad_id)
    assert row.check_status == "wrong"
    # Never served again: the next run compiles the task's best correct record, verified first time.
    again = run(RunRequest(model=str(model), target=TARGET, trials=0, out_dir=tmp_path / "c",
                           db_url=sqlite_url, measure_untuned=False), settings)
    assert again["verified"] and again["records_blamed"] == [] and again["tasks_default_schedule"] == 0


def test_db_verify_checks_imported_records_on_demand(tmp_path: Path) -> None:
    model = onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")
    logs = tmp_path / "logs"
    logs.mkdir()
    _export_records(logs, _task_mod(model), wrong_secs=1e-7, right_secs=1e-3)
    url = tiny_env(tmp_path)["TUNER_DB_URL"]
    key = open_database(url, TARGET).provenance.hardware_key

    assert tuner_cli(["db", "import", str(logs), "--hardware", key], tmp_path).returncode == 0
    result = tuner_cli(["db", "verify", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)[key]
    assert (stats["checked"], stats["passed"], stats["rejected_wrong_output"]) == (2, 1, 1)
    assert json.loads(tuner_cli(["db", "verify", "--json"], tmp_path).stdout)[key]["checked"] == 0  # done
    table = tuner_cli(["db", "verify"], tmp_path)
    assert table.returncode == 0 and "record checks" in table.stdout
    assert_clean_error(tuner_cli(["db", "verify", "--hardware", "cuda-0123"], tmp_path),
                       "no records of hardware 'cuda-0123'")


def test_a_mixed_precision_kernel_gets_the_fp16_tolerance_on_its_fp32_outputs() -> None:
    """On an H200, correct fp16 tensor-core matmuls with an fp32 epilogue differed from the
    reference by fp16 ulps: rounding in another order, not a wrong kernel."""
    import numpy as np

    from tuner.cluster.kernel_check import compare_outputs

    x16 = np.ones(4, "float16")
    ref = np.array([9.0, 0.5, -3.0, 0.0], "float32")
    got = ref + np.array([0.0078, 0.004, 0.0, 0.0], "float32")
    assert compare_outputs(["a", "out"], [x16, got], [x16, ref], TOLERANCES) is None
    problem = compare_outputs(["out"], [got], [ref], TOLERANCES)
    assert "max abs error 0.0078 in out" in problem and "float32 tolerance" in problem
    assert "element 1, got 0.504" in problem  # the element beyond its bound, not the largest error
