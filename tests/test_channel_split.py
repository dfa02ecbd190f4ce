"""Elementwise kernels that gather channels through a division (the slice after a group-padded
convolution, a channel shuffle) iterated without it: which kernels the rule takes, that the
scheduled kernel computes what the plain one does, and that the search space keeps the stock
schedule beside it, both passing MetaSchedule's postprocessors."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import te, tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tuner.schedules.channel_split import RULE_NAME
from tuner.schedules.space import space_generator

AVX2 = Target({"kind": "llvm", "mcpu": "znver2", "num-cores": 2})
H, W, GROUPS, KEPT, PADDED = 5, 6, 4, 34, 40


def _unpad_add_relu() -> tvm.IRModule:
    """Channel c of a group-padded conv output (4 groups of 34 kept of 40) + bias + residual, ReLU."""
    x = te.placeholder((1, H, W, GROUPS * PADDED), name="x")
    bias = te.placeholder((GROUPS * KEPT,), name="bias")
    res = te.placeholder((1, H, W, GROUPS * KEPT), name="res")
    kept = te.compute((1, H, W, GROUPS * KEPT), lambda n, h, w, c: x[n, h, w, c // KEPT * PADDED + c % KEPT], name="kept")
    added = te.compute(kept.shape, lambda n, h, w, c: kept[n, h, w, c] + bias[c] + res[n, h, w, c], name="added")
    out = te.compute(kept.shape, lambda n, h, w, c: te.max(added[n, h, w, c], tirx.const(0.0, "float32")), name="out")
    return tvm.IRModule({"main": te.create_prim_func([x, bias, res, out])})


def _shuffle() -> tvm.IRModule:
    """ReLU, then the channel shuffle of 4 groups of 34: out channel c is input c % 4 * 34 + c // 4."""
    x = te.placeholder((1, H, W, GROUPS * KEPT), name="x")
    relu = te.compute(x.shape, lambda n, h, w, c: te.max(x[n, h, w, c], tirx.const(0.0, "float32")), name="relu")
    out = te.compute(x.shape, lambda n, h, w, c: relu[n, h, w, c % GROUPS * KEPT + c // GROUPS], name="out")
    return tvm.IRModule({"main": te.create_prim_func([x, out])})


def _transpose() -> tvm.IRModule:
    """No division: not the rule's."""
    x = te.placeholder((1, H, W, 16), name="x")
    out = te.compute((1, 16, H, W), lambda n, c, h, w: x[n, h, w, c], name="out")
    return tvm.IRModule({"main": te.create_prim_func([x, out])})


def _row_sums() -> tvm.IRModule:
    """A reduction reading through a division: not the rule's."""
    x = te.placeholder((H, GROUPS * PADDED), name="x")
    k = te.reduce_axis((0, H), name="k")
    out = te.compute((GROUPS * KEPT,), lambda c: te.sum(x[k, c // KEPT * PADDED + c % KEPT], axis=k), name="out")
    return tvm.IRModule({"main": te.create_prim_func([x, out])})


def _spaces(mod: tvm.IRModule, default: bool) -> tuple[list[tvm.s_tir.Schedule], ms.TuneContext]:
    context = ms.TuneContext(mod=mod, target=AVX2, space_generator=space_generator(AVX2, default=default),
                             search_strategy="replay-trace", task_name="t", num_threads=2)
    return list(context.generate_design_space()), context


def _split(sch: tvm.s_tir.Schedule) -> bool:
    return any(i.kind.name == "TransformBlockLayout" for i in sch.trace.insts)


def _run(mod: tvm.IRModule, args: list[np.ndarray]) -> np.ndarray:
    lib = tvm.compile(mod, target=AVX2)
    dev = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, dev) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def _inputs(mod: tvm.IRModule) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, [int(s) for s in info.shape]).astype("float32")
            for info in ms.arg_info.ArgInfo.from_prim_func(mod["main"])]


@pytest.mark.parametrize("build,loop_kind", [(_unpad_add_relu, tirx.ForKind.VECTORIZED), (_shuffle, tirx.ForKind.UNROLLED)])
def test_a_channel_gather_is_split_by_its_divisor_and_computes_the_same(build, loop_kind) -> None:  # noqa: ANN001
    mod = build()
    (sch,), context = _spaces(mod, default=True)
    assert _split(sch)
    assert all(p.apply(sch) for p in context.space_generator.postprocs)
    func = sch.mod["main"]
    assert RULE_NAME in func.script()
    # Contiguous kept channels are one vector per group; the shuffle's strided gather over the
    # 4 groups is unrolled.
    loops: list[tirx.For] = []
    tvm_ffi.structural_walk(func.body, [(tirx.For, loops.append)])
    assert any(lp.kind == tirx.ForKind.PARALLEL for lp in loops)
    innermost = [lp for lp in loops if not isinstance(lp.body, tirx.For)]
    assert innermost and all(lp.kind == loop_kind for lp in innermost)
    args = _inputs(mod)
    plain = _run(mod, [a.copy() for a in args])
    np.testing.assert_array_equal(_run(sch.mod, [a.copy() for a in args]), plain)


@pytest.mark.parametrize("build", [_unpad_add_relu, _shuffle])
def test_the_search_space_keeps_the_stock_schedule_beside_the_split_one(build) -> None:  # noqa: ANN001
    spaces, context = _spaces(build(), default=False)
    assert sorted(_split(s) for s in spaces) == [False, True]
    for sch in spaces:
        assert all(p.apply(sch.copy()) for p in context.space_generator.postprocs)


@pytest.mark.parametrize("build", [_transpose, _row_sums])
def test_kernels_without_a_gather_by_division_or_with_a_reduction_are_left_to_the_stock_rules(build) -> None:  # noqa: ANN001
    spaces, _ = _spaces(build(), default=False)
    assert spaces and not any(_split(s) for s in spaces)
