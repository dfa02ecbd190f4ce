"""Every register block the micro-kernel rule may pick for one convolution, each timed, in % of
this CPU's measured FMA peak: checks the rule's analytic pick (`register_blocking.candidates`)
against the measured best on this machine.

    python3 bench/sweep_blocks.py 256,14,3,256 64,56,3,64 256,56,1,64
    python3 bench/sweep_blocks.py --mcpu haswell 256,14,3,256     # the AVX2 code on this CPU
    python3 bench/sweep_blocks.py --mcpu znver3 272,14,1,288,1,4  # shufflenet's grouped 1x1 conv

A shape is `in_channels,size,kernel,out_channels[,stride[,groups]]` (batch 1, bias + relu; size
`14` or `15x14`; a grouped conv is blocked per group, its vectors over one group's channels),
compiled as the pipeline compiles it (channels last on CPU). The blocks listed are all those that
divide the loops, including those the rule excludes for register pressure (`usable`).
Each block is built once and the blocks are timed by turns, `--rounds` times (the median
counts): this VM's speed swings by 2x within a minute, so blocks timed one after the other
compare stretches of the VM, not blocks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from tvm import tirx
from tvm.target import Target

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels import cpu_target, kernel_timer  # noqa: E402
from peak import fma_peak_gflops  # noqa: E402
from switches import without  # noqa: E402

from tuner.compile import schedule_module  # noqa: E402
from tuner.rewrite.graph import fuse_for_tuning, import_onnx  # noqa: E402
from tuner.load.model_io import load_model  # noqa: E402
from tuner.schedules import register_blocking as rb  # noqa: E402
from tuner.search.job_database import open_database  # noqa: E402


def conv_model(c: int, size: tuple[int, int], k: int, co: int, stride: int, path: Path,
               groups: int = 1) -> tuple[str, float, int]:
    rng = np.random.default_rng(0)
    pad, out = k // 2, _out_size(size[0], k, stride) * _out_size(size[1], k, stride)
    cg = c // groups
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[pad] * 4, strides=[stride] * 2, group=groups),
         helper.make_node("Relu", ["c"], ["y"])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, *size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, co, *(_out_size(n, k, stride) for n in size)])],
        [helper.make_tensor("w", TensorProto.FLOAT, (co, cg, k, k), rng.standard_normal((co, cg, k, k)).astype(np.float32).ravel()),
         helper.make_tensor("b", TensorProto.FLOAT, (co,), np.zeros(co, np.float32))],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path), 2.0 * co * cg * k * k * out, out


def sweep(shape: tuple, target_dict: dict, peak: float, work: Path, rounds: int) -> list[tuple[float, rb.MicroKernel]]:
    c, size, k, co, stride, groups = (*shape, 1, 1)[:6]
    path, flops, out = conv_model(c, size, k, co, stride, work / "conv.onnx", groups)
    target = Target(dict(target_dict))
    # The rows as given: padded rows (row_padding.py) would change the blocks that divide them.
    with without("row-padding"):
        fused = fuse_for_tuning(import_onnx(load_model(path, {})), target)
    isa = rb.vector_isa(target)
    # usable = all registers: 16 -> 22 (AVX2, `usable_registers` then keeps 16), 32 -> 43
    everything = rb.replace(isa, registers=(isa.registers * 4 + 2) // 3)
    blocks, _ = rb.register_blocks(out, co // groups, everything)
    original = rb.candidates
    timers = []
    for block in blocks:
        # The rule's first candidate is its pick: put the block under test first.
        rb.candidates = lambda r, v, i, b=block: [b, *[x for x in original(r, v, i) if x != b]]
        try:
            db = open_database(f"sqlite:///{work / f'{block.mr}x{block.nv}.sqlite'}", target_dict, "sweep", "sweep",
                               False, False)
            scheduled, _ = schedule_module(fused, target, db)
        finally:
            rb.candidates = original
        func = next(f for gv, f in scheduled.functions.items()
                    if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint)
        timers.append(kernel_timer(func, target, repeat=1))
    times: list[list[float]] = [[] for _ in blocks]
    for _ in range(rounds):
        for t, timer in zip(times, timers):
            t.append(timer())
    results = [(100 * flops / sorted(t)[rounds // 2] / 1e6 / peak, b) for t, b in zip(times, blocks)]
    return sorted(results, key=lambda r: -r[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="+", help="in_channels,size,kernel,out_channels[,stride]")
    parser.add_argument("--rounds", type=int, default=15, help="timings of each block, by turns")
    parser.add_argument("--mcpu", help="compile for another CPU of this ISA family (e.g. haswell: AVX2)")
    args = parser.parse_args()
    target_dict = cpu_target(args.mcpu)
    target = Target(dict(target_dict))
    threads = int(target_dict["num-cores"])
    peak = fma_peak_gflops(target, threads)
    isa = rb.vector_isa(target)
    print(f"{target_dict.get('mcpu')} ({isa.name}, {threads} cores): FMA peak {peak:.0f} GFLOP/s; "
          f"the rule uses {rb.usable_registers(isa)} of {isa.registers} vector registers")
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.shapes:
            shape = _shape(text)
            results = sweep(shape, target_dict, peak, Path(tmp), args.rounds)
            pick = rb.register_blocks(*_extents(shape), isa)[0]
            chosen = (pick[0].mr, pick[0].nv) if pick else None
            row = " ".join(f"{b.mr}x{b.nv}{'*' if (b.mr, b.nv) == chosen else ''}"
                           f"(r{b.registers()}):{pct:.0f}%" for pct, b in results)
            print(f"{text}: {row}", flush=True)
    print("* the rule's pick; r: vector registers the block claims")


def _out_size(size: int, k: int, stride: int) -> int:
    """Output height (= width) of a square conv padded by k // 2."""
    return (size + 2 * (k // 2) - k) // stride + 1


def _shape(text: str) -> tuple:
    """`256,15x14,1,1024` -> (256, (15, 14), 1, 1024); a plain size is square."""
    c, size, *rest = text.split(",")
    hw = tuple(int(n) for n in size.split("x"))
    return (int(c), hw * 2 if len(hw) == 1 else hw, *(int(x) for x in rest))


def _extents(shape: tuple) -> tuple[int, int]:
    """The conv's register-block loops: output rows (y * x) and output channels (of one group)."""
    c, size, k, co, stride, groups = (*shape, 1, 1)[:6]
    return _out_size(size[0], k, stride) * _out_size(size[1], k, stride), co // groups


if __name__ == "__main__":
    main()
