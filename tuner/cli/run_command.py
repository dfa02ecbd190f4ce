"""`tuner run` and `tuner models`: tune a model and print what came of it; list the zoo."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .. import interrupts
from ..errors import Interrupted

out = Console()


def run(
    model: Annotated[str, typer.Argument(help="Path to an .onnx file, or zoo:NAME (see `tuner models`).")],
    target: Annotated[Optional[list[str]], typer.Option(help='"cpu" (the host), "cuda" (the local GPU) or a TVM target as a JSON dict; repeat for one job on several targets (default: cpu).')] = None,
    precision: Annotated[str, typer.Option(help='"fp32", or "fp16": fp16 compute with fp32 accumulation, checked against fp32 ONNX Runtime.')] = "fp32",
    trials: Annotated[Optional[int], typer.Option(min=0, help="Measured trials for the whole model; 0 = database and defaults only.")] = None,
    db: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL of the tuning database (env TUNER_DB_URL).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default ./tuner-out/<model>).")] = None,
    input_shape: Annotated[Optional[list[str]], typer.Option(help="NAME=1,3,224,224 for inputs with dynamic dimensions; repeatable.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for a reproducible search.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help='Ray cluster to tune on ("auto", "ray://host:10001"); "local" (the default) starts one here for this run, when there is something to tune; "off": worker processes here, no Ray.')] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="At most this many builders (default: one per core of the cluster).")] = None,
    searchers: Annotated[Optional[int], typer.Option(min=1, help="Ray: searcher actors, each searching a share of the tasks (default 1: this process searches all).")] = None,
    team: Annotated[Optional[str], typer.Option(help="Team the new records belong to (env TUNER_TEAM).")] = None,
    private: Annotated[Optional[bool], typer.Option("--private/--shared", help="Serve this run's records only to its team (default: shared, or TUNER_PRIVATE).")] = None,
    precise_math: Annotated[bool, typer.Option("--precise-math", help="Keep erf/exp/tanh/softmax as libm calls instead of TVM's vectorizable polynomial forms (fast math, the default; verified within the tolerance either way).")] = False,
    winograd: Annotated[bool, typer.Option("--winograd/--no-winograd", help="CPU: 3x3 convolutions as Winograd F(4x4, 3x3), ~3x fewer multiplications (the default; verified within the tolerance either way).")] = True,
    refine: Annotated[bool, typer.Option("--refine", help="Also tune tasks the database already serves, starting from their best records (spend more budget on a model tuned before).")] = False,
    inputs: Annotated[Optional[Path], typer.Option("--inputs", help="An .npz (numpy.savez) with one array per model input, by name: verify and time on these instead of random inputs.")] = None,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph/--no-cuda-graph", help="CUDA: capture the module's kernel launches once and replay them as one CUDA graph (the default).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout, nothing else.")] = False,
) -> None:
    """Tune MODEL on this machine, compile, verify against ONNX Runtime, write model.so and report.json."""
    from ..config import get_settings
    from ..load.model_io import parse_input_shapes
    from ..pipeline import RunRequest
    from ..pipeline import run as run_pipeline
    from ..progress import LogProgress, RichProgress
    from ..targets import parse_target

    settings = get_settings()
    targets = [parse_target(t) for t in (target or ["cpu"])]
    request = RunRequest(
        model=model,
        target=targets[0],
        more_targets=targets[1:],
        trials=settings.trials if trials is None else trials,
        out_dir=out_dir,
        db_url=db,
        input_shapes=parse_input_shapes(input_shape or []),
        seed=settings.seed if seed is None else seed,
        team=team,
        private=private,
        ray_address=ray_address,
        workers=workers,
        precision=precision,
        refine=refine,
        searchers=searchers,
        fast_math=not precise_math,
        winograd=winograd,
        cuda_graph=cuda_graph,
        inputs_path=inputs,
    )
    progress = RichProgress() if sys.stderr.isatty() else LogProgress()
    interrupted = threading.Event()

    def on_sigint(_signum: int, _frame: object) -> None:
        # Once: a second Ctrl-C during clean-up would turn the exit (130, records kept) into a
        # KeyboardInterrupt escaping the interpreter (exit by signal, no clean error line).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        interrupted.set()
        interrupts.on_sigint()  # raises, or (during a search) lets the search stop at its next round

    signal.signal(signal.SIGINT, on_sigint)
    try:
        # stdout is the report's (the table, or `--json`'s JSON and nothing else): whatever the
        # run prints meanwhile goes to stderr, e.g. Ray's "(raylet) A worker died" notices, which
        # Ray prints on stdout when an actor crashed and was restarted.
        with contextlib.redirect_stdout(sys.stderr):
            report = run_pipeline(request, settings, progress)
    except (KeyboardInterrupt, Exception) as exc:
        # Ctrl-C inside MetaSchedule's C++ loop comes back wrapped in another error type.
        if not (isinstance(exc, KeyboardInterrupt) or interrupted.is_set()):
            raise
        progress.stop()
        raise Interrupted("interrupted: every record measured so far is kept in the database") from None
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for one in report.get("targets", [report]):
        _print_report(one)


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def _faster_or_slower(ratio: float) -> str:
    """How the served module compares, given the other's latency over the served one's."""
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def _print_report(report: dict) -> None:
    lat, speed = report["latency_ms"], report["speedup"]
    hw = report["hardware"]
    table = Table(title=f"{report['model']} ({report['precision']}) on {hw.get('cpu_model') or hw.get('name')} ({hw['key']})")
    table.add_column("module")
    table.add_column("latency (median)", justify="right")
    table.add_column("tuned is", justify="right")
    table.add_row("tuned (tuner)", _fmt_ms(lat["tuned"]), "")
    untuned = f"{speed['vs_untuned']:.2f}x faster" if speed["vs_untuned"] else "-"
    baseline = "untuned TVM (dlight)" if report["target"].get("kind") == "cuda" else "untuned TVM"
    table.add_row(baseline, _fmt_ms(lat["untuned"]), untuned)
    if lat.get("defaults_only"):
        row = "tuned records, not served" if report.get("served_defaults_only") else "default schedules only"
        other = lat["with_records"] if report.get("served_defaults_only") else lat["defaults_only"]
        table.add_row(row, _fmt_ms(other), _faster_or_slower(other / lat["tuned"]))
    ratio = speed["vs_onnxruntime"]
    vs_ort = "-" if not ratio else _faster_or_slower(ratio)
    reference = report.get("verify", {}).get("reference", "onnxruntime")
    ort_row = "ONNX Runtime (CPU)" if reference == "onnxruntime" else f"ONNX Runtime (CPU), {reference.removeprefix('onnxruntime ')}"
    table.add_row(ort_row, _fmt_ms(lat["onnxruntime"]), vs_ort)
    out.print(table)
    seeded = report.get("cost_model", {}).get("kindred_seeded_tasks")
    out.print(
        f"tasks: {report['tasks']} ({report['tasks_from_db']} from the database, "
        f"{report['tasks_from_other_teams']} of them from other teams; {report['tasks_tuned']} tuned now, "
        f"{report['tasks_warm_started']} warm-started from compatible hardware"
        f"{f', {seeded} seeded from kindred kernels' if seeded else ''}; "
        f"{report['tasks_default_schedule']} on default schedules); trials: {report['trials']} in "
        f"{report['tuning_seconds']:.1f} s"
    )
    out.print(
        f"verified against {report.get('verify', {}).get('reference', 'onnxruntime')} on "
        f"{report.get('verify', {}).get('inputs', 'random inputs')}: max abs error {report['max_abs_error']:.3g} "
        f"(tolerance {report['tolerance']['atol']:g} + {report['tolerance']['rtol']:g}*|ref|); loops: "
        f"{report['loops']['parallel']} parallel, {report['loops']['threads']} thread-bound, "
        f"{report['loops']['vectorized']} vectorized"
        + ("; one CUDA graph per run" if report.get("cuda_graph") else "")
    )
    checks = report.get("record_checks", {})
    if checks.get("checked") or report.get("records_blamed"):
        out.print(
            f"record checks: {checks['checked']} record(s) checked against their unscheduled kernels in "
            f"{checks['seconds']:.1f} s, {checks['rejected_wrong_output']} wrong, {checks['rejected_check_failed']} "
            f"could not be checked (never served)"
            + (f"; the model was wrong with {len(report['records_blamed'])} checked record(s), built without them: "
               + ", ".join(report["tasks_withheld"]) if report.get("records_blamed") else "")
        )
    final = report.get("final_timing", {})
    if final.get("tasks"):
        out.print(
            f"final timing: the best {final['candidates']} record(s) of {final['tasks']} task(s) timed again "
            f"{final['rounds']} times by turns in {final['seconds']:.1f} s; {final['changed']} task(s) served another "
            f"record than the search's fastest ({final['to_default']} their default schedule)"
        )
    choice = report.get("kernel_choice", {})
    if choice.get("candidates"):
        kept = choice["defaults_kept"]
        out.print(
            f"in the model: {choice['candidates']} tuned kernel(s) timed against their default schedules in "
            f"{choice['seconds']:.1f} s ({choice['records_ms']:.3f} against {choice['defaults_ms']:.3f} ms); "
            + (f"{len(kept)} ran slower than their defaults there, left out: " + ", ".join(kept) if kept
               else "every one kept")
        )
    out.print(f"module: {report['artifact']['path']}  (sha256 {report['artifact']['sha256'][:16]}...)")
    out.print(f"report: {Path(report['artifact']['path']).with_name('report.json')}")


def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List the model-zoo networks shipped with the onnx package: input shapes and GFLOPs."""
    from ..load.zoo_info import zoo_table

    rows = zoo_table()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="zoo models (use as zoo:NAME)")
    for col in ("name", "inputs", "GFLOPs", "MB"):
        table.add_column(col, justify="right" if col in ("GFLOPs", "MB") else "left")
    for row in rows:
        inputs = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in row["inputs"].items())
        table.add_row(row["name"], inputs, f"{row['gflops']:.2f}", f"{row['megabytes']:.1f}")
    out.print(table)
