"""Graph passes and runtime settings that the CPU modules' speed depends on: fast math, weights
marked layout-free (and records of unmarked kernels kept apart), TVM's thread count."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tvm_ffi
from onnx import TensorProto, helper, numpy_helper
from tvm import tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tests import onnx_models
from tuner.rewrite.graph import fuse_for_tuning, import_onnx
from tuner.load.model_io import load_model

CPU = Target({"kind": "llvm", "mcpu": "znver2", "num-cores": 2})


def _gelu_model(path: Path) -> Path:
    w = numpy_helper.from_array(np.full((16, 16), 0.1, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Erf", ["h"], ["e"]),
         helper.make_node("Tanh", ["e"], ["y"])],
        "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 16])], [w])
    return onnx_models.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _kernels(mod: object) -> str:
    return "\n".join(f.script() for f in mod.functions.values() if isinstance(f, tirx.PrimFunc))  # type: ignore[attr-defined]


def test_fast_math_replaces_libm_calls_and_precise_math_keeps_them(tmp_path: Path) -> None:
    model = load_model(str(_gelu_model(tmp_path / "gelu.onnx")), {})
    fast = _kernels(fuse_for_tuning(import_onnx(model), CPU))
    precise = _kernels(fuse_for_tuning(import_onnx(model), CPU, fast_math=False))
    assert "T.erf(" in precise and "T.tanh(" in precise
    assert "T.erf(" not in fast and "T.tanh(" not in fast


def test_weights_are_marked_layout_free_and_their_workloads_differ_from_unmarked_ones(tmp_path: Path) -> None:
    model = load_model(str(onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")), {})
    fused = fuse_for_tuning(import_onnx(model), CPU)
    (task,) = ms.relax_integration.extract_tasks(fused, CPU)
    func = task.dispatched[0]["main"]
    assert [int(i) for i in func.attrs["layout_free_buffers"]] == [1, 2]  # the weight and the bias
    # A record tuned for the kernel without the mark (an older tuner's) must never be served
    # for the marked one: the database matches workloads by structural hash and equality.
    unmarked = type(task.dispatched[0])({"main": func.without_attr("layout_free_buffers")})
    assert tvm_ffi.structural_hash(unmarked) != tvm_ffi.structural_hash(task.dispatched[0])
    assert not tvm_ffi.structural_equal(unmarked, task.dispatched[0])
    # CUDA kernels keep their old workloads (no layout rewrite there).
    cuda = Target({"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm"}})
    assert "layout_free_buffers" not in fuse_for_tuning(import_onnx(model), cuda).script()


def test_cpu_convolutions_run_channels_last_through_dropout_and_cuda_ones_keep_nchw(tmp_path: Path) -> None:
    """NHWC on CPU (1x1 convs as GEMMs whose rows are contiguous); a Dropout, as in squeezenet,
    must not stop the conversion (TVM infers no layout through its (output, mask) tuple)."""
    proto = onnx_models.small_convnet()
    nodes = list(proto.graph.node)
    nodes[1] = helper.make_node("Relu", ["c1"], ["d1"])
    nodes.insert(2, helper.make_node("Dropout", ["d1"], ["r1", "mask"]))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    model = load_model(str(onnx_models.save(proto, tmp_path / "d.onnx")), {})
    assert "dropout" not in import_onnx(model).script()
    cpu = _kernels(fuse_for_tuning(import_onnx(model), CPU))
    assert cpu.count("conv2d_nhwc") and "conv2d_nchw" not in cpu
    cuda = Target({"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm"}})
    assert "conv2d_nhwc" not in _kernels(fuse_for_tuning(import_onnx(model), cuda))


def test_tvm_runs_on_the_requested_threads_without_pinning_the_caller() -> None:
    code = (
        "import os\n"
        "from tuner.cluster.threads import use_threads, current_threads\n"
        "before = os.sched_getaffinity(0)\n"
        "use_threads(2)\n"
        "assert current_threads() == 2, current_threads()\n"
        "assert os.sched_getaffinity(0) == before, (os.sched_getaffinity(0), before)\n"
        "assert os.environ['TVM_NUM_THREADS'] == '2'\n"
        "use_threads(1)\n"
        "assert current_threads() == 1\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_cpu_timing_waits_until_other_work_ends() -> None:
    """Two processes spin on the CPUs for 3 s: the wait ends after them, with a quiet reading;
    on a quiet machine it ends at once; a wait of 0 s takes no reading. "Quiet" is relative to
    what the machine was doing before (another job may share it)."""
    import psutil

    from tuner.verify.measure import wait_for_quiet_cpu

    limit = min(95.0, psutil.cpu_percent(interval=0.5) + 30)
    spin = "import time\nt = time.time()\nwhile time.time() - t < 3: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(psutil.cpu_count() or 2)]
    try:
        time.sleep(0.5)
        start = time.monotonic()
        busy = wait_for_quiet_cpu(20, limit)
        waited = time.monotonic() - start
    finally:
        for p in spinners:
            p.wait()
    assert busy is not None and busy < limit and waited >= 1.5
    start = time.monotonic()
    assert wait_for_quiet_cpu(20, limit) < limit and time.monotonic() - start < 5
    assert wait_for_quiet_cpu(0, limit) is None


@pytest.fixture
def virtual_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """tuner.verify.measure's clock made virtual: the returned `sleep` advances it (as does the timing's
    own pause), so timing tests do not depend on the machine's speed. `sleep.now[0]` is the time."""
    from types import SimpleNamespace

    import tuner.verify.measure as measure

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    sleep.now = now  # type: ignore[attr-defined]
    monkeypatch.setattr(measure, "time", SimpleNamespace(perf_counter=lambda: now[0], sleep=sleep))
    return sleep


def test_engines_are_timed_in_alternation_so_a_slow_stretch_hits_both(virtual_clock) -> None:  # noqa: ANN001
    """The machine slows down (2x) for the last part of the timing: timed one after the other,
    the second engine takes all of it; alternated, both see the same share, so their ratio is
    their true ratio (2:1 here). A virtual clock keeps the test independent of the machine."""
    import tuner.verify.measure as measure

    sleep, now = virtual_clock, virtual_clock.now
    calls = [0, 0]

    def engine(i: int, base: float) -> None:
        calls[i] += 1
        sleep(base * (2.0 if now[0] > 0.45 else 1.0))

    a, b = measure.interleaved_medians_ms([lambda: engine(0, 0.004), lambda: engine(1, 0.002)], max_runs=100,
                                          min_seconds=10, block_seconds=0.05, settle_s=0.0)
    assert 1.9 < a / b < 2.1, (a, b)
    assert calls == [101, 101]  # a warm-up and max_runs each
    # One after the other, the same slow stretch falls on the second engine alone.
    now[0] = 0.0
    first = measure.median_ms(lambda: engine(0, 0.004), 100, 10)
    second = measure.median_ms(lambda: engine(1, 0.002), 100, 10)
    assert first / second < 1.2, (first, second)


def test_an_engine_counts_its_fastest_instance(virtual_clock) -> None:  # noqa: ANN001
    """One of three ORT sessions stays 3x slow for the whole timing (as seen after tuning on
    the 2-core VM): the engine's figure is its fastest instance, each instance's is kept."""
    import tuner.verify.measure as measure

    sleep = virtual_clock
    tvm = [lambda: sleep(0.005), lambda: sleep(0.0052)]
    ort = [lambda: sleep(0.012), lambda: sleep(0.004), lambda: sleep(0.0041)]
    (tvm_ms, tvm_all), (ort_ms, ort_all) = measure.fastest_instance_ms([tvm, ort], max_runs=20, min_seconds=0.05)
    assert tvm_ms == min(tvm_all) and abs(tvm_ms - 5.0) < 1e-6 and len(tvm_all) == 2
    assert abs(ort_ms - 4.0) < 1e-6 and abs(ort_all[0] - 12.0) < 1e-6 and len(ort_all) == 3
