"""`tuner run`: ONNX in, verified tuned module and report out.

load -> import to Relax -> fuse -> extract tasks -> split cache hits from tasks to tune -> tune
-> compile with the database and default schedules -> verify against ONNX Runtime -> time ->
write model.so and report.json (only after verification passed).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from sqlalchemy.exc import SQLAlchemyError
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tuner.db.database import Provenance, SQLDatabase
from tuner.db.engine import error_reason, make_engine, redact_url
from tuner.db.migrate import upgrade

from . import __version__
from .compile import compile_tuned, compile_untuned
from .config import Settings
from .errors import TunerError
from .graph import PRECISIONS, fuse_for_tuning, import_onnx
from .hardware import fingerprint_for
from .measure import ORTModel, TVMModel, compare, device_for, median_ms, random_inputs
from .model_io import LoadedModel, load_model
from .progress import Progress, SilentProgress
from .tuning import Workers, ray_workers, tune, tuning_cores


@dataclass
class RunRequest:
    model: str
    target: dict[str, Any]
    trials: int
    out_dir: Path | None = None
    db_url: str | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seed: int = 0
    team: str | None = None
    private: bool | None = None
    job_id: str | None = None
    measure_untuned: bool = True
    ray_address: str | None = None  # set: use Ray ("local" starts one here); None: the config
    workers: int | None = None  # caps the builders
    precision: str = "fp32"  # "fp16": mixed precision, verified against fp32 ONNX Runtime
    name: str | None = None  # the model's name in the report (default: the file's stem)
    # Also tune tasks that already have a searched record here, starting from the best records:
    # spends more budget where the database has one (a second call goes on from the first).
    refine: bool = False


def open_database(url: str, target: dict[str, Any], team: str | None = None,
                  job_id: str | None = None, private: bool = False,
                  warm_start: bool = False) -> SQLDatabase:
    """The tuning database for this target's hardware, migrated to the current schema."""
    engine = make_engine(url)
    upgrade(engine)
    fp = fingerprint_for(target)
    provenance = Provenance(
        hardware_key=fp.key, hardware_kind=fp.kind, fingerprint=fp.as_dict(),
        tuner_version=__version__, team=team, job_id=job_id, private=private,
    )
    try:
        # Writes the hardware row: proves we can write before any work is done.
        return SQLDatabase(engine, provenance, warm_start=warm_start)
    except SQLAlchemyError as exc:
        raise TunerError(f"cannot write to database {redact_url(url)}: {error_reason(exc)}") from None


@contextmanager
def _tuning_workers(request: RunRequest, settings: Settings, target: Target,
                    hardware_key: str) -> Iterator[Workers | None]:
    """Ray actors when asked for (joining a cluster or starting a local one), else None (local)."""
    address = request.ray_address if request.ray_address is not None else settings.workers.ray_address
    if settings.workers.backend != "ray" and request.ray_address is None:
        yield None
        return
    from tuner.cluster import ray_backend as rb

    cores = tuning_cores(target)
    remote = address not in ("", "local")
    try:
        connected = rb.connect(address if remote else None, {rb.hardware_resource(hardware_key): 1})
        try:
            workers = ray_workers(settings, cores, hardware_key)
            try:
                yield workers
            except Exception:
                if workers.failure() is not None:
                    raise workers.failure() from None
                raise
            finally:
                workers.close()
        finally:
            if connected:
                rb.disconnect()
    except rb.ClusterError as exc:
        raise TunerError(str(exc)) from None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def run(request: RunRequest, settings: Settings, progress: Progress | None = None) -> dict[str, Any]:
    """Everything `tuner run` does; returns the report (also written to DIR/report.json)."""
    progress = progress or SilentProgress()
    if request.precision not in PRECISIONS:
        raise TunerError(f"unknown precision {request.precision!r}: expected one of {', '.join(PRECISIONS)}")
    t_start = time.perf_counter()
    model: LoadedModel = load_model(request.model, request.input_shapes)
    if request.name:
        model.name = request.name
    out_dir = request.out_dir or Path("tuner-out") / model.name
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TunerError(f"cannot create output folder {out_dir}: {exc.strerror}") from None
    db_url = request.db_url or settings.resolved_db_url()
    team = request.team or settings.team
    job_id = request.job_id or uuid.uuid4().hex[:12]
    private = settings.private if request.private is None else request.private
    database = open_database(db_url, request.target, team, job_id, private, settings.warm_start)
    target = Target(dict(request.target))

    progress.message(f"importing {model.name} ({model.source})")
    relax_mod = import_onnx(model, request.precision)  # passes return new modules: reused for the untuned baseline
    fused = fuse_for_tuning(relax_mod, target)
    tasks = ms.relax_integration.extract_tasks(fused, target)
    # CUDA stores each task's default (dlight) schedule beside the search's records: a task that
    # holds only that is still to tune. (On CPU a searched trace may have no sampling decision.)
    cuda = target.kind.name == "cuda"
    cached = [database.best(t.dispatched[0], searched_only=cuda) for t in tasks]
    to_tune = list(range(len(tasks))) if request.refine else [i for i, best in enumerate(cached) if best is None]
    refined = sum(1 for i in to_tune if cached[i] is not None)
    from_other_teams = sum(1 for i, best in enumerate(cached) if best is not None and best.team != team and i not in to_tune)
    warm = [i for i in to_tune if settings.warm_start and database.warm_start_records(tasks[i].dispatched[0])]
    progress.plan(len(tasks), len(tasks) - len(to_tune), from_other_teams, len(to_tune), len(warm),
                  request.trials if to_tune else 0)

    t_tune = time.perf_counter()
    trials_done = defaults_measured = 0
    cluster: dict[str, Any] = {"backend": "none"}
    if request.trials > 0 and to_tune:
        if request.workers:
            settings = settings.model_copy(update={"workers": settings.workers.model_copy(update={"builders": request.workers})})
        with _tuning_workers(request, settings, target, database.provenance.hardware_key) as workers:
            startup_s = time.perf_counter() - t_tune
            result = tune(
                [tasks[i] for i in to_tune], target, database, request.trials, settings,
                request.seed, out_dir / "logs", progress, workers=workers,
            )
        trials_done = result.trials
        defaults_measured = result.defaults_measured
        cluster = result.cluster
        spent = cluster.setdefault("seconds", {})
        spent["database"] = round(database.commit_seconds, 3)
        spent["startup"] = round(startup_s, 3)
        spent["search"] = round(time.perf_counter() - t_tune - sum(spent.values()), 3)
    tuning_seconds = time.perf_counter() - t_tune
    tuned_now = sum(1 for i in to_tune if database.best(tasks[i].dispatched[0]) is not None)

    progress.message("compiling with the database and default schedules")
    compiled = compile_tuned(fused, target, database)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
        lib_path = Path(tmp) / "model.so"
        compiled.executable.export_library(str(lib_path))
        names = list(model.input_shapes)
        inputs = random_inputs(model.input_shapes, model.input_dtypes, request.seed)
        device = device_for(target.kind.name)
        tvm_model = TVMModel(lib_path, names, device)
        args = tvm_model.prepare(inputs)
        ort_model = ORTModel(model.proto)
        reference = ort_model.run(inputs)
        out_names = [o.name for o in model.proto.graph.output]
        dtype = str(reference[0].dtype) if reference else "float32"
        v = settings.verify
        fp16 = dtype == "float16" or request.precision == "fp16"
        atol, rtol = (v.fp16_atol, v.fp16_rtol) if fp16 else (v.fp32_atol, v.fp32_rtol)
        comparison = compare(tvm_model.run(args), reference, out_names, atol, rtol)

        progress.message("timing tuned, untuned and ONNX Runtime")
        m = settings.measure
        tuned_ms = median_ms(lambda: tvm_model.call(args), m.model_runs, m.model_min_seconds)
        ort_ms = median_ms(lambda: ort_model.run(inputs), m.model_runs, m.model_min_seconds)
        untuned_ms = None
        if request.measure_untuned:
            untuned = TVMModel(compile_untuned(relax_mod, target), names, device)
            untuned_args = untuned.prepare(inputs)
            untuned_ms = median_ms(lambda: untuned.call(untuned_args), m.model_runs, m.model_min_seconds)
        data = lib_path.read_bytes()
    artifact = out_dir / "model.so"
    _write_atomic(artifact, data)

    report: dict[str, Any] = {
        "model": model.name,
        "source": model.source,
        "input_shapes": {k: list(v) for k, v in model.input_shapes.items()},
        "target": request.target,
        "hardware": database.provenance.fingerprint,
        "db": redact_url(db_url),
        "trials": trials_done,
        "tasks": len(tasks),
        "tasks_from_db": len(tasks) - len(to_tune),
        "tasks_from_other_teams": from_other_teams,
        "tasks_refined": refined if trials_done else 0,
        "tasks_warm_started": len(warm) if trials_done else 0,
        "tasks_tuned": tuned_now,
        "tasks_default_schedule": compiled.defaults.total,
        # CUDA: tasks whose dlight schedule was measured beside the search (tuning keeps it
        # where nothing it found was faster).
        "tasks_default_measured": defaults_measured,
        "cluster": cluster,
        "default_schedules": compiled.defaults.as_dict(),
        "tuning_seconds": round(tuning_seconds, 3),
        "total_seconds": round(time.perf_counter() - t_start, 3),
        "latency_ms": {"untuned": untuned_ms, "tuned": tuned_ms, "onnxruntime": ort_ms},
        "speedup": {
            "vs_untuned": (untuned_ms / tuned_ms) if untuned_ms else None,
            "vs_onnxruntime": ort_ms / tuned_ms,
        },
        "max_abs_error": comparison.max_abs_error,
        "precision": request.precision,
        # fp16 is checked against ONNX Runtime in fp32, with the looser fp16 tolerance.
        "tolerance": {"atol": atol, "rtol": rtol, "reference": "onnxruntime fp32"},
        "verified": comparison.verified,
        "loops": compiled.loops,
        "artifact": {
            "path": str(artifact.resolve()),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        },
        "team": team,
        "private": private,
        "job_id": job_id,
        "seed": request.seed,
        "tvm_version": tvm.__version__,
        "tuner_version": __version__,
    }
    _write_atomic(out_dir / "report.json", json.dumps(report, indent=2).encode())
    return report
