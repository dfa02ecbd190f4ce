"""Where a compiled model's time goes inside the module: each kernel's time as the relax VM's
profiler sees it in the running model, next to the same kernel timed alone (bench/kernels.py:
back to back, and lone calls after a flush of its weights as the tuning runner times them), and the
module's wall time. The difference between the wall time and the sum of the kernels is
the VM's own work (calls, allocations, layout copies the graph kept); a kernel slower in situ
than alone waits for memory its neighbours evicted (e.g. weights no longer in cache).

    python3 bench/module_profile.py zoo:resnet50 --db sqlite:////tmp/r50.sqlite
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from tvm.target import Target

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels import cpu_target, kernel_table, model_on_database  # noqa: E402
from peak import fma_peak_gflops  # noqa: E402
from results_file import write_results  # noqa: E402
from switches import SWITCHES, without  # noqa: E402

from tuner.cluster.threads import use_threads  # noqa: E402
from tuner.compile import compile_tuned  # noqa: E402
from tuner.verify.inputs import verification_inputs  # noqa: E402
from tuner.verify.measure import TVMModel, kernels_in_model_ms, median_ms  # noqa: E402


def profile(model_ref: str, db_url: str, repeats: int, mcpu: str | None = None,
            switch: str | None = None) -> dict[str, Any]:
    target_dict = cpu_target(mcpu)
    use_threads(int(target_dict["num-cores"]))
    target = Target(dict(target_dict))
    with without(switch):
        loaded, fused, database = model_on_database(model_ref, target_dict, db_url)
        compiled = compile_tuned(fused, target, database)
    names = list(loaded.input_shapes)
    model = TVMModel(compiled.executable, names)
    profiled = TVMModel(compiled.executable, names)
    args = model.prepare(verification_inputs(loaded, None, 0)[0])
    # The wall time is taken in short stretches between the instrumented inferences: timed minutes
    # apart, the two differed by ~1.5 ms on squeezenet (7.48 against 6.02 ms, AMD EPYC znver2)
    # where the VM's speed swung 1.5x within minutes; by turns on another VM they agreed.
    walls: list[float] = []
    (situ,) = kernels_in_model_ms([profiled], [args], 0, min_rounds=repeats, max_rounds=repeats,
                                  between=lambda: walls.append(median_ms(lambda: model.call(args), 50, 0.3)))
    wall = float(np.median(walls))
    peak = fma_peak_gflops(target, int(target_dict["num-cores"]))
    with without(switch):
        alone = {r["kernel"]: r for r in kernel_table(model_ref, target_dict, db_url, peak)}
    rows = []
    for name, ms_ in sorted(situ.items(), key=lambda kv: -kv[1]):
        a = alone.get(name)
        rows.append({"name": name, "in_situ_ms": ms_, "alone_ms": a["ms"] * a["calls"] if a else None,
                     "alone_cold_ms": a["cold_ms"] * a["calls"] if a else None,
                     "gflop": a["gflop"] * a["calls"] if a else None})
    kernels_situ = sum(r["in_situ_ms"] for r in rows if r["alone_ms"] is not None)
    return {"model": model_ref, "mcpu": target_dict["mcpu"], "without": switch, "wall_ms": wall,
            "kernels_in_situ_ms": kernels_situ,
            "kernels_alone_ms": sum(r["alone_ms"] for r in rows if r["alone_ms"] is not None),
            "kernels_alone_cold_ms": sum(r["alone_cold_ms"] for r in rows if r["alone_ms"] is not None),
            "vm_builtins_ms": sum(r["in_situ_ms"] for r in rows if r["alone_ms"] is None),
            "peak_gflops": peak, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--db", required=True, help="SQLAlchemy URL of the tuning database")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--mcpu", help="compile for another CPU (e.g. znver3: AVX2 code on an AVX-512 CPU)")
    parser.add_argument("--without", choices=sorted(SWITCHES), help="with this feature off (bench/switches.py)")
    args = parser.parse_args()
    result = profile(args.model, args.db, args.repeats, args.mcpu, args.without)
    console = Console(width=150)
    table = Table(title=f"{args.model}: wall {result['wall_ms']:.2f} ms, kernels in situ "
                        f"{result['kernels_in_situ_ms']:.2f}, alone {result['kernels_alone_ms']:.2f} "
                        f"(cold {result['kernels_alone_cold_ms']:.2f}), VM builtins {result['vm_builtins_ms']:.2f}")
    for col in ("kernel / builtin", "in situ ms", "alone ms", "alone cold ms", "in situ / alone", "GFLOP/s in situ"):
        table.add_column(col, justify="left" if col.startswith("kernel") else "right")
    for r in result["rows"][: args.top]:
        alone = r["alone_ms"]
        table.add_row(r["name"], f"{r['in_situ_ms']:.3f}", f"{alone:.3f}" if alone else "-",
                      f"{r['alone_cold_ms']:.3f}" if alone else "-",
                      f"{r['in_situ_ms'] / alone:.2f}" if alone else "-",
                      f"{r['gflop'] / r['in_situ_ms'] * 1e3:.0f}" if r["gflop"] else "-")
    console.print(table)
    if args.json:
        write_results(result, args.json)


if __name__ == "__main__":
    main()
