"""The search space: kernels that ask for MetaSchedule rules TVM does not ship."""

from __future__ import annotations

from pathlib import Path

import pytest
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tests import onnx_models
from tuner.rewrite.graph import fuse_for_tuning, import_onnx
from tuner.load.model_io import load_model
from tuner.schedules.space import space_generator


def test_pooling_kernels_get_the_ordinary_rules_without_warnings(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    target = Target({"kind": "llvm", "num-cores": 2})
    model = load_model(str(onnx_models.save(onnx_models.pools(), tmp_path / "pools.onnx")), {})
    tasks = ms.relax_integration.extract_tasks(fuse_for_tuning(import_onnx(model), target), target)
    pooling = [t for t in tasks if "schedule_rule" in t.dispatched[0].script()]
    assert pooling, "Relax no longer annotates pooling kernels: this test checks nothing"
    for task in pooling:
        context = ms.TuneContext(mod=task.dispatched[0], target=target, space_generator=space_generator(target),
                                 search_strategy="replay-trace", task_name=task.task_name, num_threads=2)
        spaces = context.generate_design_space()
        assert spaces
        for sch in spaces:
            assert "schedule_rule" not in sch.mod.script()  # dropped, as MetaSchedule does for unknown rules
            assert "parallel" in str(sch.trace) or "Parallel" in str(sch.trace)  # the ordinary CPU rules ran
    assert "Unknown schedule rule" not in capfd.readouterr().err
