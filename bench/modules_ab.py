"""Compiled modules of one model timed by turns: `model.so` files that `tuner run` wrote (tuned
with different code, settings or budgets, or `--trials 0`), each checked against ONNX Runtime,
then all of them and ONNX Runtime timed in alternation, `--rounds` times, in one process. This
VM's speed swings within a minute: only the ratios of one round mean anything.

    python3 bench/modules_ab.py zoo:squeezenet defaults=/tmp/a/model.so tuned=/tmp/b/model.so \\
        --rounds 11 --out bench/results/x.json

Unlike `defaults_ab.py`, which compiles both variants itself from one database, this compares
modules built anywhere: e.g. searches whose records live under different hardware keys.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from by_turns import round_line, verified_by_turns  # noqa: E402
from core_latency import shares_cache  # noqa: E402
from results_file import write_results  # noqa: E402

from tuner.cluster.threads import use_threads  # noqa: E402
from tuner.hardware import machine  # noqa: E402
from tuner.load.model_io import load_model  # noqa: E402
from tuner.verify.measure import TVMModel  # noqa: E402


def labelled(spec: str) -> tuple[str, Path]:
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH/model.so, got {spec!r}")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"no such module: {path}")
    return label, Path(path)


def _by_state(rows: dict[str, dict], ort_ms: list[float], core_ns: list[float | None],
              first: str) -> dict[str, dict]:
    """Median ratios over the rounds the two vCPUs shared an L3 and over those they did not: a
    change can win in one state and lose in the other, and a run's mix of the two is chance."""
    states: dict[str, dict] = {}
    for state, shared in (("one L3", True), ("two L3s", False)):
        picked = [i for i, ns in enumerate(core_ns) if shares_cache(ns) is shared]
        if not picked:
            continue
        states[state] = {"rounds": len(picked), "modules": {label: {
            "vs_first": statistics.median(row["ms"][i] / rows[first]["ms"][i] for i in picked),
            "vs_onnxruntime": statistics.median(row["ms"][i] / ort_ms[i] for i in picked),
        } for label, row in rows.items()}}
    return states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the model the modules were compiled from (a path or zoo:NAME)")
    parser.add_argument("modules", nargs="+", type=labelled, metavar="LABEL=PATH")
    parser.add_argument("--threads", type=int, default=2, help="TVM and ONNX Runtime threads")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    use_threads(args.threads)
    loaded = load_model(args.model, {})
    modules = {label: TVMModel(path, list(loaded.input_shapes)) for label, path in args.modules}

    timed = verified_by_turns(loaded, modules, args.threads, args.rounds, 3.0,
                              lambda *a: print(round_line(*a), flush=True))
    rows, ort_ms = timed.modules, timed.onnxruntime_ms
    first = args.modules[0][0]
    for label, path in args.modules:
        rows[label]["path"] = str(path)
    for label, row in rows.items():
        row["vs_" + first] = [a / b for a, b in zip(row["ms"], rows[first]["ms"])]
        row["median_vs_" + first] = statistics.median(row["vs_" + first])
        row["median_vs_onnxruntime"] = statistics.median(a / o for a, o in zip(row["ms"], ort_ms))
        print(f"{label}: median {statistics.median(row['ms']):.3f} ms, / {first} {row['median_vs_' + first]:.3f}, "
              f"/ ORT {row['median_vs_onnxruntime']:.3f}, max abs error {row['max_abs_error']:.1e}")
    by_state = _by_state(rows, ort_ms, timed.core_round_trip_ns, first)
    for state, summary in by_state.items():
        print(f"{state} ({summary['rounds']} rounds): " + ", ".join(
            f"{label} / {first} {r['vs_first']:.3f}, / ORT {r['vs_onnxruntime']:.3f}"
            for label, r in summary["modules"].items()))
    if args.out:
        write_results({"cpu": machine(), "model": args.model, "threads": args.threads, "modules": rows,
                       "onnxruntime_ms": ort_ms, "core_round_trip_ns": timed.core_round_trip_ns,
                       "by_state": by_state}, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
