"""The register-blocked micro-kernel rule: what it matches, the register block it picks from the
ISA, and that its default schedules compute the right numbers with packed weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
import tvm_ffi
from tvm import tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tests import onnx_models
from tests.compiled import assert_matches_ort
from tuner.compile import compile_tuned, schedule_module
from tuner.rewrite.graph import fuse_for_tuning, import_onnx
from tuner.verify.inputs import random_inputs
from tuner.verify.measure import ORTModel, TVMModel
from tuner.load.model_io import load_model
from tuner.schedules import register_blocking
from tuner.schedules.isa import VectorISA, vector_isa
from tuner.schedules.register_blocking import RULE_NAME, candidates, efficiency
from tuner.schedules.space import space_generator

AVX2 = Target({"kind": "llvm", "mcpu": "znver2", "num-cores": 2})
AVX512 = Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})


def test_the_isa_comes_from_the_target_not_this_machine() -> None:
    assert (vector_isa(AVX2).lanes, vector_isa(AVX2).registers) == (8, 16)
    assert (vector_isa(AVX512).lanes, vector_isa(AVX512).registers) == (16, 32)


def test_multiply_adds_per_cycle_follow_the_cpu_not_the_vector_width() -> None:
    """Zen 4 splits a 512-bit FMA in two: its AVX-512 multiplies no faster than AVX2."""
    lanes = {mcpu: vector_isa(Target({"kind": "llvm", "mcpu": mcpu})).fma_lanes
             for mcpu in ("znver2", "znver4", "znver5", "skylake-avx512", "rocketlake")}
    assert lanes == {"znver2": 16, "znver4": 16, "znver5": 32, "skylake-avx512": 32, "rocketlake": 16}


@pytest.mark.parametrize("target", [AVX2, AVX512], ids=["avx2", "avx512"])
def test_the_analytic_register_block_fits_the_registers_and_divides_the_loops(target: Target) -> None:
    isa = vector_isa(target)
    for rows, cols in [(128, 1024), (3025, 64), (49, 512), (169, 192)]:
        kernels = candidates(rows, cols, isa)
        assert kernels, (rows, cols)
        best = kernels[0]
        assert best.registers() <= isa.registers
        assert rows % best.mr == 0 and cols % (best.nv * isa.lanes) == 0
        assert efficiency(best, isa) == max(efficiency(k, isa) for k in kernels)
    # A 128-row dense on AVX2: 4 rows x 2 vectors (8 accumulators, 2 loads and 4 broadcasts a
    # step); measured here at 129 GFLOP/s on 2 cores, against 47 for 8 x 2 (which spills).
    assert (candidates(128, 1024, vector_isa(AVX2))[0].mr, candidates(128, 1024, vector_isa(AVX2))[0].nv) == (4, 2)


def test_efficiency_prefers_enough_accumulators_to_cover_the_fma_latency() -> None:
    isa = VectorISA("avx2", 8, 16)
    one = candidates(1, 8, isa)[0]  # a single accumulator: latency-bound
    assert efficiency(one, isa) < 0.2


def test_one_vector_blocks_of_many_rows_lose_to_shorter_ones_on_16_registers() -> None:
    """1000 channels (squeezenet's classifier before group_padding widens it to 1008 on AVX2: one
    vector a row) over 182 rows: 7x1, not 13x1, which spills on AVX2; on AVX-512's 32 registers
    the longer block stays first."""
    best = candidates(182, 1000, vector_isa(AVX2))[0]
    assert (best.mr, best.nv) == (7, 1)
    assert candidates(182, 1000, VectorISA("avx512", 8, 32))[0].mr > 7
    # Rows with no short divisor keep the long block over a single row.
    assert candidates(121, 1000, vector_isa(AVX2))[0].mr == 11


def test_register_blocks_sweep_the_vectors_inside_each_row_block_only_when_all_of_b_fits_in_l1() -> None:
    isa = vector_isa(AVX2)
    assert register_blocking.rows_outer(34, 40, 8, isa)  # shufflenet's grouped 1x1: B 5.4 KB
    assert not register_blocking.rows_outer(34, 40, 40, isa)  # one vector block: nothing to sweep
    assert not register_blocking.rows_outer(256, 64, 16, isa)  # resnet50's 1x1 256 -> 64: B 64 KB
    assert not register_blocking.rows_outer(1024, 256, 16, isa)  # the transformer's FFN-down


def _tasks(path: Path, target: Target) -> list[ms.ExtractedTask]:
    """The tasks with direct convolutions (these tests are about the direct conv's micro-kernel;
    tests/test_winograd.py has the Winograd ones)."""
    model = load_model(str(path), {})
    return ms.relax_integration.extract_tasks(fuse_for_tuning(import_onnx(model), target, winograd=False), target)


@pytest.mark.parametrize("which", ["matmul", "conv"])
def test_dense_and_conv_kernels_get_the_micro_kernel_in_the_search_space(tmp_path: Path, which: str) -> None:
    model = onnx_models.matmul_bias_relu(m=32, k=64, n=64) if which == "matmul" else onnx_models.small_convnet(channels=16)
    tasks = _tasks(onnx_models.save(model, tmp_path / f"{which}.onnx"), AVX2)
    gemm = [t for t in tasks if ("matmul" if which == "matmul" else "conv2d") in t.task_name]
    assert gemm
    for task in gemm:
        context = ms.TuneContext(mod=task.dispatched[0], target=AVX2, space_generator=space_generator(AVX2),
                                 search_strategy="replay-trace", task_name=task.task_name, num_threads=2)
        spaces = context.generate_design_space()
        blocked = [s for s in spaces if RULE_NAME in s.mod.script()]
        stock = [s for s in spaces if RULE_NAME not in s.mod.script()]
        assert blocked and stock  # the micro-kernel beside MetaSchedule's own tiling
        for sch in blocked:
            assert all(p.apply(sch) for p in context.space_generator.postprocs)
            text = sch.mod.script()
            assert "T.parallel" in text and "T.vectorized" in text and "T.unroll" in text
            # The weight is packed (RewriteLayout): a layout-rewrite block feeds the kernel.
            assert "meta_schedule.layout_rewrite_preproc" in text


MODELS = {
    "matmul": lambda: onnx_models.matmul_bias_relu(m=32, k=64, n=64),
    "conv": lambda: onnx_models.small_convnet(channels=16),
    # The output channel indexes the input through its group: split into (group, channel).
    "grouped": lambda: onnx_models.grouped_conv(channels=64, groups=4),
    # 40 channels a group: 5 vector blocks of 8 whose B fits in L1, swept inside each row block.
    "grouped-a-stationary": lambda: onnx_models.grouped_conv(channels=160, groups=4),
    # The channel indexes both operands: vectorized over channels, the padded input channel-last.
    "depthwise": lambda: onnx_models.grouped_conv(channels=32, groups=32, size=10, kernel=3),
    # 10x10: register blocks start mid-row; batch norm folded, the residual Sum an Add.
    "resnet-block": lambda: onnx_models.conv_bn_residual(),
}


@pytest.mark.parametrize("which", list(MODELS))
def test_default_schedules_are_micro_kernels_with_prepacked_weights_and_match_ort(tmp_path: Path, which: str) -> None:
    model = MODELS[which]()
    path = onnx_models.save(model, tmp_path / f"{which}.onnx")
    loaded = load_model(str(path), {})
    fused = fuse_for_tuning(import_onnx(loaded), AVX2, winograd=False)
    scheduled, stats = schedule_module(fused, AVX2, ms.database.MemoryDatabase())
    kernels = {gv.name_hint: f for gv, f in scheduled.functions.items() if isinstance(f, tirx.PrimFunc)}
    gemm = [f for name, f in kernels.items() if ("matmul" if which == "matmul" else "conv2d") in name]
    assert gemm and all(RULE_NAME in f.script() for f in gemm)
    # No weight is re-laid out at inference: the packing kernels were folded into constants.
    assert not any("layout_rewrite_preproc" in f.script() for f in kernels.values())
    compiled = compile_tuned(fused, AVX2, ms.database.MemoryDatabase())
    lib = tvm.runtime.load_module(_export(compiled.executable, tmp_path))
    names = list(loaded.input_shapes)
    inputs = random_inputs(loaded.input_shapes, loaded.input_dtypes, 0)
    model_ = TVMModel(lib, names)
    got = model_.run(model_.prepare(inputs))
    want = ORTModel(loaded.proto).run(inputs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    assert stats.sampled >= 1


def _export(executable: object, folder: Path) -> str:
    path = folder / "m.so"
    executable.export_library(str(path))  # type: ignore[attr-defined]
    return str(path)


def test_every_register_block_the_search_may_draw_replays(tmp_path: Path) -> None:
    """The evolutionary search replays the micro-kernel's trace with other sampled register
    blocks: each must replay (a 1-row block once dropped a unit loop, and every squeezenet
    conv task's search failed with 'old_outputs.size() == new_outputs.size()')."""
    tasks = _tasks(onnx_models.save(onnx_models.small_convnet(channels=16), tmp_path / "c.onnx"), AVX2)
    conv = next(t for t in tasks if "conv2d" in t.task_name)
    mod = conv.dispatched[0]
    context = ms.TuneContext(mod=mod, target=AVX2, space_generator=space_generator(AVX2),
                             search_strategy="replay-trace", task_name=conv.task_name, num_threads=2)
    space = next(s for s in context.generate_design_space() if RULE_NAME in s.mod.script())
    trace = space.trace
    samples = [inst for inst in trace.insts if inst.kind.name == "SampleCategorical"]
    assert len(samples) == 2  # rows and vector width of the register block
    replayed = 0
    for inst in samples:
        for choice in range(len(inst.attrs[0])):
            sch = tvm.s_tir.Schedule(mod)
            trace.with_decision(inst, choice, remove_postproc=True).apply_to_schedule(sch, remove_postproc=True)
            assert all(p.apply(sch) for p in context.space_generator.postprocs)
            replayed += 1
    assert replayed > 2


def test_batch_norm_and_sum_fold_into_the_convolutions(tmp_path: Path) -> None:
    """resnet50's Conv, BatchNormalization, Sum: batch norm folded into the conv weights and the
    residual Sum an Add, so each conv is one kernel with its epilogue (bias, residual, relu)."""
    loaded = load_model(str(onnx_models.save(onnx_models.conv_bn_residual(), tmp_path / "r.onnx")), {})
    text = import_onnx(loaded).script()
    assert "batch_norm" not in text and "R.stack" not in text
    tasks = _tasks(tmp_path / "r.onnx", AVX512)
    convs = [t for t in tasks if t.task_name.startswith("fused_conv2d")]
    # Besides the convs, only the model's input and output change layout (channels last).
    layout = [t for t in tasks if "transpose" in t.task_name or "layout_transform" in t.task_name]
    assert len(convs) == 2 and len(layout) == 2 and len(tasks) == 4


@pytest.mark.parametrize("target", [AVX2, AVX512], ids=["avx2", "avx512"])
def test_conv_register_blocks_starting_mid_row_replay_and_keep_the_accumulator_in_vectors(tmp_path: Path, target: Target) -> None:
    """10x10 outputs: register blocks of 4 or 20 rows start mid-row. Every sampled block must
    pass the postprocessors (the epilogue computed at the tile once had a dynamic extent), and
    the accumulator is laid out [rows, vector], the vector last (in the output's NCHW layout it
    was gathered and scattered through memory at every FMA: 2-3% of peak)."""
    tasks = _tasks(onnx_models.save(onnx_models.conv_bn_residual(), tmp_path / "r.onnx"), target)
    lanes = vector_isa(target).lanes
    for task in [t for t in tasks if "conv2d" in t.task_name]:
        mod = task.dispatched[0]
        context = ms.TuneContext(mod=mod, target=target, space_generator=space_generator(target),
                                 search_strategy="replay-trace", task_name=task.task_name, num_threads=2)
        space = next(s for s in context.generate_design_space() if RULE_NAME in s.mod.script())
        rows = next(i for i in space.trace.insts if i.kind.name == "SampleCategorical")
        assert {4, 20} & {int(r) for r in rows.attrs[0]}
        for choice in range(len(rows.attrs[0])):
            sch = tvm.s_tir.Schedule(mod)
            space.trace.with_decision(rows, choice, remove_postproc=True).apply_to_schedule(sch, remove_postproc=True)
            assert all(p.apply(sch) for p in context.space_generator.postprocs), rows.attrs[0][choice]
            local = [b for b in _allocs(sch.mod["main"]) if b.scope() == "local"]
            assert local and all(int(b.shape[-1]) % lanes == 0 and int(b.shape[-1]) <= 16 * 4 for b in local)


def _allocs(func: tirx.PrimFunc) -> list[tirx.Buffer]:
    found: list[tirx.Buffer] = []

    tvm_ffi.structural_walk(func.body, [(tvm.s_tir.SBlock, lambda block: found.extend(block.alloc_buffers))])
    return found


def test_default_softmax_keeps_its_reductions_out_of_the_output_loop(tmp_path: Path) -> None:
    """A default schedule is one unmeasured sample: it must not compute a row's reduction
    inside the loop over that row's outputs (resnet50's 1000-class softmax took 0.85 ms so)."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Softmax", ["x"], ["y"], axis=1)], "softmax",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1000])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1000])])
    path = onnx_models.save(onnx.helper.make_model(graph, opset_imports=onnx_models.OPSET), tmp_path / "s.onnx")
    fused = fuse_for_tuning(import_onnx(load_model(str(path), {})), AVX512)
    for seed in range(4):
        tasks = ms.relax_integration.extract_tasks(fused, AVX512)
        mod = tasks[0].dispatched[0]
        context = ms.TuneContext(mod=mod, target=AVX512, space_generator=space_generator(AVX512, default=True),
                                 search_strategy="replay-trace", rand_state=seed, num_threads=1)
        for sch in context.generate_design_space():
            norm = sch.get_sblock("T_softmax_norm")
            for name in ("T_softmax_maxelem", "T_softmax_expsum"):
                outer = [sch.get(lp) for lp in sch.get_loops(norm)]
                assert not any(sch.get(lp).same_as(o) for lp in sch.get_loops(sch.get_sblock(name)) for o in outer), name


@pytest.mark.parametrize("target,channels,lanes", [(AVX2, 12, 4), (AVX512, 24, 8)])
def test_narrowed_vectors_are_whole_registers_not_one_ragged_vector(tmp_path: Path, target: Target, channels: int,
                                                                    lanes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """12 channels on AVX2 (3 vectors of 4 lanes), 24 on AVX-512 (3 of 8), with a block of 3
    vectors per row: each vector is its own vectorized loop, not one of 12 or 24 lanes, which
    LLVM assembled element by element on AVX-512 (shufflenet's first convolution ran 2.5x
    slower)."""
    original = register_blocking.candidates
    monkeypatch.setattr(register_blocking, "candidates",
                        lambda rows, vector, isa: [k for k in original(rows, vector, isa) if k.nv == 3])
    loaded = load_model(str(onnx_models.save(onnx_models.conv_relu6(channels=channels), tmp_path / "m.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), target, winograd=False)
    scheduled, _ = schedule_module(fused, target, ms.database.MemoryDatabase())
    (conv,) = [f.script() for gv, f in scheduled.functions.items()
               if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint]
    assert RULE_NAME in conv
    assert f"T.vectorized(T.int64({lanes}))" in conv and f"T.vectorized(T.int64({channels}))" not in conv
    assert "T.unroll(T.int64(3))" in conv
    if target is AVX2:  # AVX-512 code may not run on the machine that runs the tests
        assert_matches_ort(loaded, fused, AVX2, tmp_path)


def test_a_vector_loop_that_may_span_3_registers_is_emitted_as_one_register_vectors() -> None:
    """LLVM builds a 48-lane vector (3 AVX-512 registers) element by element: 2-3% of the peak."""
    isa = vector_isa(AVX512)
    assert register_blocking.vector_step(isa, 16, [16, 32]) is None
    assert register_blocking.vector_step(isa, 16, [16, 32, 64]) is None
    assert register_blocking.vector_step(isa, 16, [16, 48]) == 16
    narrowed = VectorISA("avx512", 8, 32)  # 1000 channels: 8-lane vectors on AVX-512
    assert register_blocking.vector_step(narrowed, 16, [8, 16]) == 8


def test_threads_split_the_rows_where_activations_outweigh_the_weights() -> None:
    # squeezenet's first Winograd GEMM (A 0.45 MB, weights 0.15, C 1.8): by tiles, as its transforms
    assert register_blocking.rows_parallel((451584, 147456, 1806336), 36, True)
    # resnet50's 7x7 layers' Winograd GEMM: 37.7 MB of weights for 4 tiles stay split by position
    assert not register_blocking.rows_parallel((36 * 4 * 512 * 4, 37748736, 36 * 4 * 512 * 4), 36, True)
    # a 1x1 convolution 64 -> 256 on 56x56 rows, and 2048 -> 512 on 7x7 ones
    assert register_blocking.rows_parallel((56 * 56 * 64 * 4, 64 * 256 * 4, 56 * 56 * 256 * 4), 1, False)
    assert not register_blocking.rows_parallel((49 * 2048 * 4, 2048 * 512 * 4, 49 * 512 * 4), 1, False)
    # attention's batched matmuls keep their heads outermost, as the softmax after them
    assert not register_blocking.rows_parallel((4 * 128 * 64 * 4, 4 * 128 * 64 * 4, 4 * 128 * 128 * 4), 4, False)


def test_a_grouped_conv_in_blocks_of_several_vectors_keeps_its_accumulators_in_registers(tmp_path: Path) -> None:
    """72 channels per group on AVX2 (shufflenet's): blocks of 4 rows x 3 vectors, which need all
    16 registers (1.4x faster than 7x1 there). The epilogue iterates the group and the channel in
    it as the conv does: over the output channel, TVM could not bound the accumulator to a block
    of 3 of a group's 9 vectors and kept all of it in memory (every FMA loaded and stored its
    accumulator: 2x3 at 20% of the peak)."""
    assert (candidates(196, 72, vector_isa(AVX2))[0].mr, candidates(196, 72, vector_isa(AVX2))[0].nv) == (4, 3)
    # 40 channels per group at 28x28: the whole group in one block of 2 rows x 5 vectors (0.68x
    # the time of 7x1, which read the input once for each of the 5 vector blocks).
    assert (candidates(784, 40, vector_isa(AVX2))[0].mr, candidates(784, 40, vector_isa(AVX2))[0].nv) == (2, 5)
    loaded = load_model(str(onnx_models.save(onnx_models.grouped_conv(channels=288, size=14), tmp_path / "g.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), AVX2)
    scheduled, _ = schedule_module(fused, AVX2, ms.database.MemoryDatabase())
    (conv,) = [f for gv, f in scheduled.functions.items()
               if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint]
    assert RULE_NAME in conv.script() and "T.unroll(T.int64(3))" in conv.script()
    # TOPI's padding of nothing is inlined: the block reads the input in place, no copy first.
    assert "pad_temp" not in conv.script()
    compacted = tvm.transform.Sequential([
        tvm.s_tir.transform.PlanAndUpdateBufferAllocationLocation(), tvm.s_tir.transform.ConvertBlocksToOpaque(),
        tvm.s_tir.transform.CompactBufferAllocation()])(tvm.IRModule({"main": conv}))
    local = [b for b in _allocs(compacted["main"]) if b.scope() == "local"]
    assert [int(np.prod([int(d) for d in b.shape])) for b in local] == [4 * 24]
    assert_matches_ort(loaded, fused, AVX2, tmp_path)


def test_real_padding_stays_a_producer_of_its_own(tmp_path: Path) -> None:
    """Only copies are inlined (`_inline_copies`): a 3x3 conv's padding inlined would put its
    bounds check in the FMA loop."""
    loaded = load_model(str(onnx_models.save(onnx_models.grouped_conv(channels=32, kernel=3), tmp_path / "g.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), AVX2, winograd=False)
    scheduled, _ = schedule_module(fused, AVX2, ms.database.MemoryDatabase())
    (conv,) = [f.script() for gv, f in scheduled.functions.items()
               if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint]
    assert RULE_NAME in conv and "pad_temp" in conv


def test_a_depthwise_conv_pads_each_row_of_blocks_where_it_computes_them(tmp_path: Path) -> None:
    """14x14 outputs, blocks of 7 along x: the padding of one block of channels' three input
    rows is computed inside the parallel loop, right before that output row's blocks, instead of
    in a pass over the whole input first (shufflenet's depthwise convs 0.53-0.91x alone)."""
    assert register_blocking.depthwise_by_width(True, 14, 16, vector_isa(AVX2))  # 7x1
    assert not register_blocking.depthwise_by_width(True, 14, 32, vector_isa(AVX2))  # 2x4 best: rows fused
    loaded = load_model(str(onnx_models.save(onnx_models.grouped_conv(channels=16, groups=16, size=14, kernel=3),
                                             tmp_path / "d.onnx")), {})
    fused = fuse_for_tuning(import_onnx(loaded), AVX2, winograd=False)
    scheduled, _ = schedule_module(fused, AVX2, ms.database.MemoryDatabase())
    (conv,) = [f.script() for gv, f in scheduled.functions.items()
               if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint]
    assert RULE_NAME in conv and conv.count("T.parallel") == 1
    assert conv.index("T.parallel") < conv.index('T.sblock("pad_temp")') < conv.index("_update")
    assert_matches_ort(loaded, fused, AVX2, tmp_path)
