"""Which loop order the micro-kernel rule's register blocks should sweep in, kernel by kernel:
every default-schedule kernel of a model that `register_blocking.rows_outer` turns A-stationary
(row blocks outside the vector blocks) timed against the same kernel B-stationary (vector
blocks outside), alternately in one process, with the model's default-only latency both ways.

    python3 bench/block_order.py shufflenet squeezenet resnet50 transformer --out bench/results/block-order.json

Prints per kernel the calls, both medians and their ratio (< 1: A-stationary is faster), and
the time per model summed over the calls.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tvm.target import Target

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels import called_kernels, kernel_timer, model_on_database  # noqa: E402
from models import model_spec  # noqa: E402
from results_file import write_results  # noqa: E402

from tuner.compile import schedule_module  # noqa: E402
from tuner.hardware import machine  # noqa: E402
from tuner.schedules import register_blocking  # noqa: E402
from tuner.targets import host_cpu_target  # noqa: E402


@contextmanager
def b_stationary() -> Iterator[None]:
    """Every register block B-stationary, as before `rows_outer` existed."""
    chosen = register_blocking.rows_outer
    register_blocking.rows_outer = lambda *_: False
    try:
        yield
    finally:
        register_blocking.rows_outer = chosen


def compare(name: str, work: Path, target: dict, rounds: int) -> dict:
    source = model_spec(name, work)
    tgt = Target(dict(target))
    _, fused, db = model_on_database(source, target, f"sqlite:///{work / 'empty.sqlite'}")
    chosen, _ = schedule_module(fused, tgt, db)
    with b_stationary():
        before, _ = schedule_module(fused, tgt, db)
    rows = []
    for kernel, func, calls in called_kernels(chosen):
        old = before[kernel]
        if func.script() == old.script():
            continue
        timers = kernel_timer(func, tgt), kernel_timer(old, tgt)  # each built once
        a, b = [], []
        for _ in range(rounds):  # alternately: a slow stretch of the VM falls on both
            a.append(timers[0]())
            b.append(timers[1]())
        a_ms, b_ms = sorted(a)[rounds // 2], sorted(b)[rounds // 2]
        rows.append({"kernel": kernel, "calls": calls, "a_stationary_ms": a_ms,
                     "b_stationary_ms": b_ms, "ratio": a_ms / b_ms})
        print(f"[block-order] {name} {kernel} x{calls}: A-stationary {a_ms:.3f} ms, "
              f"B-stationary {b_ms:.3f} ms ({a_ms / b_ms:.2f}x)", flush=True)
    total_a = sum(r["a_stationary_ms"] * r["calls"] for r in rows)
    total_b = sum(r["b_stationary_ms"] * r["calls"] for r in rows)
    print(f"[block-order] {name}: {len(rows)} kernel(s) change; their time per inference "
          f"{total_a:.3f} ms A-stationary vs {total_b:.3f} ms B-stationary", flush=True)
    return {"model": name, "kernels": rows, "changed_ms": {"a_stationary": total_a, "b_stationary": total_b}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timings per kernel and order")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    target = host_cpu_target()
    with tempfile.TemporaryDirectory(prefix="tuner-order-") as tmp:
        results = {"cpu": machine(), "models": [compare(n, Path(tmp), target, args.rounds) for n in args.models]}
    if args.out:
        write_results(results, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
