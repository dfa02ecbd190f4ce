"""Where a module loses its time when the VM's two cores stop sharing a cache: per kernel, its
in-situ time (relax VM instrument, as `module_profile.py`) in batches tagged by the cores'
cache-line round trip measured before and after each (`core_latency.py`; a batch whose two probes
disagree is dropped), for `--seconds` of wall time, then the medians of each state side by side.

    python3 bench/core_states.py zoo:squeezenet /tmp/ftsq/ab/final/model.so --seconds 90 --json F

It waits for the host to move the vCPUs: a run that saw only one state says so and compares nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import tvm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core_latency import round_trip_ns, shares_cache  # noqa: E402
from results_file import write_results  # noqa: E402

from tuner.cluster.threads import use_threads  # noqa: E402
from tuner.hardware import machine  # noqa: E402
from tuner.load.model_io import load_model  # noqa: E402
from tuner.verify.inputs import verification_inputs  # noqa: E402
from tuner.verify.measure import TVMModel, kernels_in_model_ms, median_ms  # noqa: E402

STATES = {True: "shared", False: "split"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the model the module was compiled from (a path or zoo:NAME)")
    parser.add_argument("module", type=Path, help="its model.so")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    use_threads(args.threads)
    loaded = load_model(args.model, {})
    lib = tvm.runtime.load_module(str(args.module))
    model = TVMModel(lib, list(loaded.input_shapes))
    inputs = model.prepare(verification_inputs(loaded, None, 0)[0])
    profiled = TVMModel(lib, list(loaded.input_shapes))
    kernels: dict[str, list[dict[str, float]]] = {s: [] for s in STATES.values()}
    walls: dict[str, list[float]] = {s: [] for s in STATES.values()}
    if round_trip_ns(0.02) is None:
        parser.error("no core round trip: needs 2 CPUs and a C compiler (cc)")
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        before = shares_cache(round_trip_ns(0.02))
        wall = median_ms(lambda: model.call(inputs), 20, 0.05)
        (situ,) = kernels_in_model_ms([profiled], [inputs], 0, min_rounds=5, max_rounds=5)
        if before is None or shares_cache(round_trip_ns(0.02)) != before:
            continue  # the host moved a vCPU during the batch
        kernels[STATES[before]].append(situ)
        walls[STATES[before]].append(wall)
    counts = {s: len(v) for s, v in kernels.items()}
    print(f"batches: {counts}; module wall ms, median: "
          + ", ".join(f"{s} {statistics.median(w):.3f}" for s, w in walls.items() if w))
    result = {"cpu": machine(), "model": args.model, "module": str(args.module), "batches": counts,
              "wall_ms": {s: statistics.median(w) for s, w in walls.items() if w}}
    if all(counts.values()):
        names = sorted(set().union(*kernels["shared"], *kernels["split"]))
        med = {s: {n: statistics.median(r.get(n, 0.0) for r in runs) for n in names} for s, runs in kernels.items()}
        rows = sorted(({"name": n, "shared_ms": med["shared"][n], "split_ms": med["split"][n]} for n in names),
                      key=lambda r: r["shared_ms"] - r["split_ms"])
        print(f"all kernels and builtins: shared {sum(med['shared'].values()):.3f} ms, "
              f"split {sum(med['split'].values()):.3f} ms")
        for r in rows[:args.top]:
            print(f"{r['name'][:64]:64s} {r['shared_ms']:7.3f} -> {r['split_ms']:7.3f} ms "
                  f"(x{r['split_ms'] / max(r['shared_ms'], 1e-9):.2f})")
        result["rows"] = rows
    else:
        print("only one state seen: nothing to compare")
    if args.json:
        write_results(result, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
