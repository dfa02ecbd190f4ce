"""Activation storage per shape or size (tuner/compile/storage_plan.py): the plan splits TVM's
shared blocks so that each holds one shape (or sizes within a ratio), the module still computes
what ONNX Runtime computes, and `auto` takes per-shape only where the host's cores span more than
one L3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tests import onnx_models
from tuner.compile import lowering_passes, schedule_module
from tuner.compile.storage_plan import l3_domains, resolve
from tuner.load.model_io import load_model
from tuner.rewrite.graph import fuse_for_tuning, import_onnx
from tuner.verify.inputs import random_inputs
from tuner.verify.measure import ORTModel, TVMModel

CPU = Target({"kind": "llvm", "num-cores": 2})


def _planned(fused: tvm.ir.IRModule, storage: str) -> dict[str, set[tuple]]:
    """Each storage block of the lowered `main` and the tensor shapes placed in it."""
    scheduled, _ = schedule_module(fused, CPU, ms.database.MemoryDatabase())
    mod = scheduled
    with CPU, tvm.transform.PassContext(opt_level=3):
        for p in lowering_passes(CPU, storage):
            mod = p(mod)
            if p.info.name == "StaticPlanBlockMemory" and storage == "reuse":
                break
            if p.info.name in ("StoragePerShape", "StoragePerSize"):
                break
    blocks: dict[str, set[tuple]] = {}
    alloc_tensor = tvm.ir.Op.get("relax.memory.alloc_tensor")
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and v.op.same_as(alloc_tensor):
                blocks.setdefault(str(v.args[0]), set()).add(tuple(int(d) for d in v.args[2].values))
    return blocks


def test_blocks_hold_one_shape_each_and_the_module_matches_ort(tmp_path: Path) -> None:
    loaded = load_model(str(onnx_models.save(onnx_models.small_convnet(channels=8, size=16), tmp_path / "m.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), CPU, winograd=False)
    shared = _planned(fused, "reuse")
    assert any(len(shapes) > 1 for shapes in shared.values()), shared  # TVM's plan mixes shapes
    split = _planned(fused, "per-shape")
    assert all(len(shapes) == 1 for shapes in split.values()), split
    assert set().union(*shared.values()) == set().union(*split.values())

    from tuner.compile import compile_tuned
    inputs = random_inputs(loaded.input_shapes, loaded.input_dtypes, 0)
    want = ORTModel(loaded.proto).run(inputs)
    for storage in ("reuse", "per-shape", "per-size-1.25"):
        path = tmp_path / f"{storage}.so"
        compile_tuned(fused, CPU, ms.database.MemoryDatabase(), storage=storage).executable.export_library(str(path))
        module = TVMModel(path, list(loaded.input_shapes))
        args = module.prepare(inputs)
        for _ in range(2):  # the second inference runs in the blocks the first one left
            got = module.run(args)
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))


def test_per_size_splits_only_tenants_beyond_the_ratio(tmp_path: Path) -> None:
    loaded = load_model(str(onnx_models.save(onnx_models.small_convnet(channels=8, size=16), tmp_path / "m.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), CPU, winograd=False)
    shared = _planned(fused, "reuse")
    mixed = [shapes for shapes in shared.values() if len(shapes) > 1]
    assert mixed, shared
    sizes = sorted(np.prod(shape) for shape in mixed[0])
    ratio = sizes[-1] / sizes[0]  # the mixed block's tenants, 3 and 8 channels: 2.67x apart
    assert _planned(fused, f"per-size-{ratio * 1.01:g}") == shared  # within the ratio: TVM's plan
    split = _planned(fused, f"per-size-{ratio * 0.99:g}")
    assert all(len(shapes) == 1 for shapes in split.values()), split
    assert set().union(*shared.values()) == set().union(*split.values())


def _sysfs(root: Path, l3_of_cpu: dict[int, str]) -> Path:
    for cpu, shared in l3_of_cpu.items():
        for index, (level, cpus) in enumerate([("1", str(cpu)), ("2", str(cpu)), ("3", shared)]):
            d = root / f"cpu{cpu}" / "cache" / f"index{index}"
            d.mkdir(parents=True)
            (d / "level").write_text(level + "\n")
            (d / "shared_cpu_list").write_text(cpus + "\n")
    return root


def test_auto_takes_per_shape_only_where_the_cores_span_several_l3s(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("tuner.compile.storage_plan.allowed_cpus", lambda: [0, 1])
    one = _sysfs(tmp_path / "one", {0: "0-1", 1: "0-1"})
    two = _sysfs(tmp_path / "two", {0: "0", 1: "1"})
    assert (l3_domains([0, 1], one), l3_domains([0, 1], two), l3_domains([0, 1], tmp_path / "none")) == (1, 2, 1)
    assert resolve("auto", 2, sysfs=one) == "reuse"
    assert resolve("auto", 2, sysfs=two) == "per-shape"
    assert resolve("auto", 1, sysfs=two) == "reuse"  # one thread: every line stays on its core anyway
    assert resolve("reuse", 2, sysfs=two) == "reuse" and resolve("per-shape", 2, sysfs=one) == "per-shape"
    assert resolve("per-size", 2, 1.5, sysfs=one) == "per-size-1.5"
