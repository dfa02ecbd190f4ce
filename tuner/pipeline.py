"""`tuner run`: ONNX in, verified tuned module and report out.

load -> import to Relax -> fuse -> extract tasks -> split cache hits from tasks to tune -> tune
-> compile with the database and default schedules -> verify against ONNX Runtime -> time ->
write model.so and report.json (only after verification passed).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from sqlalchemy.engine import make_url
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tuner.cluster.local import LocalChecker
from tuner.cluster.nodes import hardware_units
from tuner.cluster.threads import current_threads, use_threads
from tuner.db.database import CHECK_WRONG, SQLDatabase
from tuner.db.engine import redact_url
from tuner.schedules.cost_model import default_ranker
from tuner.schedules.intrinsics import load_tensor_intrinsics

from . import __version__
from .compile import Compiled, compile_tuned, compile_untuned
from .compile.kernel_choice import KernelChoice, kernel_tasks, searched_records, slower_records
from .compile.storage_plan import resolve as resolve_storage
from .config import Settings
from .errors import TunerError, VerificationError
from .hardware import fingerprint_for
from .load.model_io import LoadedModel, load_model
from .progress import Progress, SilentProgress
from .rewrite import split_k, winograd
from .rewrite.graph import PRECISIONS, fuse_for_tuning, import_onnx
from .search.cost_model_training import retraining_due, start_model, start_retraining
from .search.job_database import open_database
from .search.final_timing import FinalTiming
from .search.record_checks import CheckStats, check_records
from .search.tuning import Workers, ray_builder_count, ray_workers, tune, tuning_cores
from .stages import stage
from .verify.blame import TooManyAttempts, find_culprits
from .verify.inputs import verification_inputs
from .verify.measure import (
    Comparison,
    TVMModel,
    compare,
    device_for,
    fastest_instance_ms,
    kernels_in_model_ms,
    median_ms,
    wait_for_quiet_cpu,
)
from .verify.reference import reference_outputs


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
    # Ray: "local" starts one here, else a cluster's address; "off": worker processes here, no
    # Ray; None: the config (by default a local Ray, started when there is something to tune).
    ray_address: str | None = None
    workers: int | None = None  # caps the builders
    precision: str = "fp32"  # "fp16": mixed precision, verified against fp32 ONNX Runtime
    name: str | None = None  # the model's name in the report (default: the file's stem)
    # Also tune tasks that already have a searched record here, starting from the best records:
    # spends more budget where the database has one (a second call goes on from the first).
    refine: bool = False
    # Ray: searcher actors that each search a share of the tasks (None: the config's; 1: the
    # driver searches every task itself).
    searchers: int | None = None
    # erf/exp/tanh/softmax as vectorizable polynomials (TVM's fast math); False: libm calls.
    fast_math: bool = True
    # CPU: 3x3 convolutions as Winograd F(4x4, 3x3) kernels; False: direct convolutions.
    winograd: bool = True
    # CUDA: kernel launches captured once and replayed as a CUDA graph.
    cuda_graph: bool = True
    # Inputs to verify and time on (an .npz with one array per input); None: random ones.
    inputs_path: Path | None = None
    # More hardware targets for the same job (`--target cpu --target cuda`): each is tuned on the
    # nodes with its hardware and gets its own folder under out_dir.
    more_targets: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def _tuning_workers(request: RunRequest, settings: Settings, plans: list[_Plan]) -> Iterator[list[Workers] | None]:
    """Ray actors when asked for (joining a cluster or starting a local one), else None (local).

    One Workers per target: the builders are shared (any node builds for any target), each
    target has its own runners on the nodes with its hardware. The actors are this job's: they
    are killed when it ends."""
    if not _uses_ray(request, settings):
        yield None
        return
    from tuner.cluster import ray_backend as rb

    address = request.ray_address if request.ray_address is not None else settings.workers.ray_address
    remote = address not in ("", "local")
    w = settings.workers
    try:
        local = {rb.hardware_resource(p.key): hardware_units(p.target_dict) for p in plans}
        connected = rb.connect(address if remote else None, local)
        try:
            # The builders start (import TVM) while each target's runners do.
            builders = rb.launch_builders(ray_builder_count(settings))
            runners: list[rb.ActorPool] = []
            workers: list[Workers] = []
            try:
                for plan in plans:
                    runners.append(rb.start_runners(plan.key, w.actor_start_timeout_s))
                rb.await_pool(builders, "builder actors", w.actor_start_timeout_s)
                for plan, pool in zip(plans, runners):
                    workers.append(ray_workers(settings, tuning_cores(plan.target), plan.key, (builders, pool)))
                yield workers
            except Exception:
                failure = next((f for f in (wk.failure() for wk in workers) if f is not None), None)
                if failure is not None:
                    raise failure from None
                raise
            finally:
                for wk in workers:
                    wk.close()
                for pool in [*runners, builders]:
                    pool.close()
        finally:
            if connected:
                rb.disconnect()
    except rb.ClusterError as exc:
        raise TunerError(str(exc)) from None


@contextmanager
def _intrinsics_preloaded(wanted: bool) -> Iterator[None]:
    """TVM's tensor intrinsics imported in a thread while the caller goes on; the thread is
    joined on the way out, so an early error never leaves it importing into the shutdown."""
    if not wanted:
        yield
        return
    thread = threading.Thread(target=load_tensor_intrinsics, name="tensor-intrinsics", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def _uses_ray(request: RunRequest, settings: Settings) -> bool:
    if request.ray_address is not None:
        return request.ray_address != "off"
    return settings.workers.backend == "ray"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class _Plan:
    """One target of a job: its database handle, tasks, and which of them are to tune."""

    target_dict: dict[str, Any]
    target: Target
    database: SQLDatabase
    fused: tvm.IRModule
    tasks: list[ms.ExtractedTask]
    to_tune: list[int]
    refined: int
    from_other_teams: int
    warm: list[int]
    out_dir: Path
    checks: CheckStats = field(default_factory=CheckStats)  # first-use checks of stored records

    @property
    def key(self) -> str:
        return self.database.provenance.hardware_key


@dataclass
class _Tuned:
    trials: int = 0
    defaults_measured: int = 0
    cluster: dict[str, Any] = field(default_factory=lambda: {"backend": "none"})
    seconds: float = 0.0
    checks: CheckStats = field(default_factory=CheckStats)
    cost_model: dict[str, Any] = field(default_factory=lambda: {"transferred": False})
    final_timing: FinalTiming = field(default_factory=FinalTiming)


@dataclass
class _Job:
    """What every target of a job shares: the model, its Relax import, the database settings."""

    request: RunRequest
    settings: Settings
    progress: Progress
    model: LoadedModel
    relax_mod: tvm.IRModule
    db_url: str
    team: str
    job_id: str
    private: bool
    t_start: float
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # verification and timing inputs
    inputs_source: str = ""
    # First-use checks of stored records, in worker processes here (this machine has the
    # target's hardware: the module is verified on it); started only when a record needs one.
    checker: LocalChecker | None = None


def run(request: RunRequest, settings: Settings, progress: Progress | None = None) -> dict[str, Any]:
    """Everything `tuner run` does; returns the report (also written to DIR/report.json).

    With ``request.more_targets`` the job tunes every target (at the same time, on Ray) and
    writes one folder per target under DIR; the report then lists the targets' reports."""
    progress = progress or SilentProgress()
    if request.precision not in PRECISIONS:
        raise TunerError(f"unknown precision {request.precision!r}: expected one of {', '.join(PRECISIONS)}")
    n_searchers = request.searchers or settings.workers.searchers
    if n_searchers > 1 and not _uses_ray(request, settings):
        raise TunerError(f"{n_searchers} searchers need Ray: add --ray-address local (or a cluster's address)")
    targets = [request.target, *request.more_targets]
    keys = [fingerprint_for(t).key for t in targets]
    if len(set(keys)) < len(keys):
        raise TunerError("two --target values name the same hardware (" + ", ".join(sorted(
            {k for k in keys if keys.count(k) > 1})) + "): give each target once")

    t_start = time.perf_counter()
    with stage("load"):
        model: LoadedModel = load_model(request.model, request.input_shapes)
        inputs, inputs_source = verification_inputs(model, request.inputs_path, request.seed)
    if request.name:
        model.name = request.name
    out_dir = request.out_dir or Path("tuner-out") / model.name
    several = len(targets) > 1
    folders = [out_dir / _folder_name(t, k) for t, k in zip(targets, keys)] if several else [out_dir]
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TunerError(f"cannot create output folder {folder}: {exc.strerror}") from None
    job = _Job(request, settings, progress, model, None, request.db_url or settings.resolved_db_url(),
               request.team or settings.team, request.job_id or uuid.uuid4().hex[:12],
               settings.private if request.private is None else request.private, t_start, inputs, inputs_source)
    databases = [open_database(job.db_url, t, job.team, job.job_id, job.private, settings.warm_start) for t in targets]
    job.checker = LocalChecker(tuning_cores(Target(dict(request.target))), settings.checks.timeout_s)
    try:
        return _run_job(job, targets, databases, folders, out_dir)
    finally:
        job.checker.close()


def _run_job(job: _Job, targets: list[dict[str, Any]], databases: list[SQLDatabase], folders: list[Path],
             out_dir: Path) -> dict[str, Any]:
    request, progress, model = job.request, job.progress, job.model
    several = len(targets) > 1

    progress.message(f"importing {model.name} ({model.source})")
    with stage("import"):
        job.relax_mod = import_onnx(model, request.precision)  # passes return new modules: reused for the untuned baseline
    plans = []
    for n, (t, db, folder) in enumerate(zip(targets, databases, folders), 1):
        if several:
            progress.message(f"target {n}/{len(targets)}: {t.get('kind')} ({db.provenance.hardware_key})")
        with stage("fusion"):
            plans.append(_plan(job, t, db, folder))
    with stage("tuning"):
        tuned = _tune(job, plans)
    reports = []
    try:
        for n, (plan, result) in enumerate(zip(plans, tuned), 1):
            if several:
                progress.message(f"target {n}/{len(targets)}: {plan.target_dict.get('kind')} ({plan.key})")
            reports.append(_finish(job, plan, result))
    finally:  # the records are stored whether or not the module verified
        for plan, result in zip(plans, tuned):
            if result.cost_model.get("retraining"):
                start_retraining(job.db_url, plan.key, job.settings.cost_model.min_records, str(plan.out_dir / "logs"))
    if not several:
        return reports[0]
    report = {
        "model": model.name, "source": model.source, "job_id": job.job_id,
        "targets": reports, "trials": sum(r["trials"] for r in reports),
        "verified": all(r["verified"] for r in reports),
        "total_seconds": round(time.perf_counter() - job.t_start, 3),
    }
    _write_atomic(out_dir / "report.json", json.dumps(report, indent=2).encode())
    return report


def _folder_name(target: dict[str, Any], key: str) -> str:
    """A target's output folder in a multi-target job: its kind and hardware key, path-safe."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{target.get('kind')}-{key}")[:120]


def _plan(job: _Job, target_dict: dict[str, Any], database: SQLDatabase, out_dir: Path) -> _Plan:
    target = Target(dict(target_dict))
    fused = fuse_for_tuning(job.relax_mod, target, job.request.fast_math, job.request.winograd)
    tasks = ms.relax_integration.extract_tasks(fused, target)
    # Tuning stores each task's default schedule beside the search's records: a task that holds
    # only that is still to tune. (On CPU a searched trace may have no sampling decision, so
    # only the mark tells a default there.)
    cuda = target.kind.name == "cuda"
    # Records that arrived unchecked (an import, an older tuner, another TVM version) are checked
    # before they count as served.
    checks = check_records(tasks, target, database, job.checker, job.settings, job.progress)
    cached = [database.best(t.dispatched[0], searched_only=True, traceless_defaults=cuda) for t in tasks]
    to_tune = list(range(len(tasks))) if job.request.refine else [i for i, best in enumerate(cached) if best is None]
    refined = sum(1 for i in to_tune if cached[i] is not None)
    from_other_teams = sum(1 for i, best in enumerate(cached) if best is not None and best.team != job.team and i not in to_tune)
    warm = [i for i in to_tune if job.settings.warm_start and database.warm_start_records(tasks[i].dispatched[0])]
    job.progress.plan(len(tasks), len(tasks) - len(to_tune), from_other_teams, len(to_tune), len(warm),
                      job.request.trials if to_tune else 0)
    return _Plan(target_dict, target, database, fused, tasks, to_tune, refined, from_other_teams, warm, out_dir,
                 checks)


def _tune(job: _Job, plans: list[_Plan]) -> list[_Tuned]:
    """Spend the budget on every target's tasks to tune: one after the other in this process,
    or, with searchers on Ray, every target's shares at the same time."""
    request, settings = job.request, job.settings
    tuned = [_Tuned() for _ in plans]
    todo = [i for i, plan in enumerate(plans) if request.trials > 0 and plan.to_tune]
    if not todo:
        return tuned
    if request.workers:
        settings = settings.model_copy(update={"workers": settings.workers.model_copy(update={"builders": request.workers})})
    n_searchers = request.searchers or settings.workers.searchers
    first = plans[todo[0]]
    # Searcher actors on Ray: for several shares (several targets, or several tasks and trials for
    # several searchers), and for one unless `isolated_search` is off (a crash of TVM's search
    # then restarts an actor, not the run). Without Ray, this process searches.
    in_shares = _uses_ray(request, settings) and (settings.workers.isolated_search or len(todo) > 1
                                                  or min(n_searchers, len(first.to_tune), request.trials) > 1)
    t_tune = time.perf_counter()
    # When this process searches, it imports the tensor intrinsics its search needs while Ray or
    # the worker processes start (seconds of CPU beside seconds of waiting).
    with _intrinsics_preloaded(not in_shares), _tuning_workers(request, settings, [plans[i] for i in todo]) as workers:
        startup_s = time.perf_counter() - t_tune
        if in_shares:
            # Imported here: a run without Ray (`--ray-address off`, a GPU box) never loads Ray.
            from .search.shares import DatabaseSpec, ShareJob, tune_shares

            spec = DatabaseSpec(job.db_url, job.team, job.job_id, job.private, settings.warm_start)
            jobs = [ShareJob([plans[i].tasks[t] for t in plans[i].to_tune], plans[i].target, plans[i].key,
                             request.trials, workers[n]) for n, i in enumerate(todo)]
            results = tune_shares(jobs, spec, n_searchers, settings, request.seed, first.out_dir / "logs",
                                  job.progress, same_host_only=make_url(job.db_url).get_backend_name() == "sqlite")
        else:
            results = []
            for n, i in enumerate(todo):
                plan = plans[i]
                result = tune([plan.tasks[t] for t in plan.to_tune], plan.target, plan.database, request.trials,
                              settings, request.seed, plan.out_dir / "logs", job.progress,
                              workers=workers[n] if workers else None)
                results.append((result, plan.database.commit_seconds))
    elapsed = time.perf_counter() - t_tune
    for i, (result, commit_s) in zip(todo, results):
        cluster = result.cluster
        spent = cluster.setdefault("seconds", {})
        spent["database"] = round(commit_s, 3)
        spent["startup"] = round(startup_s, 3)
        spent["search"] = round(elapsed - sum(spent.values()), 3)
        tuned[i] = _Tuned(result.trials, result.defaults_measured, cluster, elapsed, result.checks,
                          dict(result.cost_model), result.final_timing)
        plan = plans[i]
        # The family's cost model learns what this job measured, in its own process, once this
        # run is done (_run_job).
        tuned[i].cost_model["retraining"] = retraining_due(
            plan.database.engine, plan.database.provenance.family, settings.cost_model.retrain_after_records)
    return tuned


@dataclass
class _Blame:
    """Tasks whose tuned records the final module does without, after it failed verification."""

    withheld: list[int] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # marked wrong: never served again


def _blame(job: _Job, plan: _Plan, failure: VerificationError, build: Any, verify: Any) -> _Blame:
    """Find the tuned records that make the model fail, mark them wrong, and say which tasks the
    module must be built without; re-raises `failure` when the default schedules alone fail too."""
    database, tasks = plan.database, plan.tasks
    served = {i: database.served_record_id(t.dispatched[0]) for i, t in enumerate(tasks)}
    suspects = [i for i, rid in served.items() if rid is not None]
    if not suspects:
        raise failure
    job.progress.message(f"{failure}: bisecting {len(suspects)} task(s) with tuned records to find the ones to blame")

    def verifies(withheld: set[int]) -> bool:
        try:
            verify(build(withheld)[2])
            return True
        except VerificationError:
            return False

    try:
        culprits = find_culprits(suspects, verifies, job.settings.checks.max_bisect_compiles)
    except TooManyAttempts as exc:
        job.progress.message(f"bisection stopped after {exc}: every tuned record withheld")
        return _Blame(withheld=suspects)
    if culprits is None:
        raise failure
    why = f"the model's output was wrong with this record and right without it ({failure})"
    records = []
    for i in culprits:
        database.record_checked(served[i], CHECK_WRONG, why)
        records.append({"task": tasks[i].task_name, "record_id": served[i], "reason": why})
        job.progress.message(f"{tasks[i].task_name}: record {served[i]} makes the model wrong: marked, never served")
    return _Blame(withheld=culprits, records=records)


@dataclass
class _Module:
    """A compiled candidate of the module to serve, loaded, with its inputs on its device."""

    compiled: Compiled
    path: Path
    model: TVMModel
    args: list[Any]
    comparison: Comparison | None = None  # None until verified


def _choose_kernels(job: _Job, plan: _Plan, served: _Module, skip: set[int], build: Any,
                    verify: Any) -> tuple[_Module, _Module | None, KernelChoice]:
    """CPU: the tasks served a searched record are timed inside the running model against a
    twin built with their default schedules, and the records slower there are withheld
    (tuner/compile/kernel_choice.py). Returns the module to serve, the defaults-only twin
    (None when no task had a searched record) and what was found."""
    start = time.perf_counter()
    database, tasks = plan.database, plan.tasks
    candidates = searched_records(tasks, database, skip)
    if not candidates:
        return served, None, KernelChoice()
    job.progress.message(f"timing {len(candidates)} tuned kernel(s) inside the model against their default schedules")
    compiled, path, model = build(skip | set(candidates))
    defaults = _Module(compiled, path, model, model.prepare(job.inputs))
    with stage("time"):
        with_records, with_defaults = kernels_in_model_ms(
            [served.model, defaults.model], [served.args, defaults.args], job.settings.measure.model_min_seconds)
    slower, records_ms, defaults_ms = slower_records(candidates, kernel_tasks(plan.fused, tasks, database),
                                                     with_records, with_defaults)
    if slower:
        job.progress.message(f"{len(slower)} of {len(candidates)} tuned kernel(s) ran slower in the model than "
                             f"their default schedules: built without them")
        if len(slower) == len(candidates):
            chosen = defaults
        else:
            compiled, path, model = build(skip | set(slower))
            chosen = _Module(compiled, path, model, [])
        try:
            chosen.args, chosen.comparison = verify(chosen.model)
            served = chosen
        except VerificationError as failure:
            slower = []
            job.progress.message(f"{failure}: keeping every record")
    choice = KernelChoice(len(candidates), [tasks[i].task_name for i in slower], records_ms, defaults_ms,
                          time.perf_counter() - start)
    return served, defaults, choice


def _finish(job: _Job, plan: _Plan, tuned: _Tuned) -> dict[str, Any]:
    """Compile one target with the database, verify, time, write model.so and report.json."""
    request, settings, progress, model = job.request, job.settings, job.progress, job.model
    target, database, tasks, out_dir = plan.target, plan.database, plan.tasks, plan.out_dir
    tuned_now = sum(1 for i in plan.to_tune if database.best(tasks[i].dispatched[0]) is not None)
    checks = plan.checks.add(tuned.checks)

    # The module is verified and timed on the target's cores, and so is ONNX Runtime.
    threads = tuning_cores(target) if target.kind.name == "llvm" else 0
    if threads:
        use_threads(threads)
    storage = resolve_storage(settings.compile.storage_plan, threads, settings.compile.size_ratio) if threads else "reuse"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
        names = list(model.input_shapes)
        device = device_for(target.kind.name)
        inputs = job.inputs
        with stage("verify"):
            ref = reference_outputs(model.proto, inputs, threads)
            if ref.fallback_reason:
                progress.message(f"verifying against {ref.name}: {ref.fallback_reason}")
            out_names = [o.name for o in model.proto.graph.output]
            dtype = str(ref.outputs[0].dtype) if ref.outputs else "float32"
            v = settings.verify
            fp16 = dtype == "float16" or request.precision == "fp16"
            atol, rtol = (v.fp16_atol, v.fp16_rtol) if fp16 else (v.fp32_atol, v.fp32_rtol)
            hint = (" (in fp16, values somewhere in the model beyond fp16's range, 65504: run it in fp32)"
                    if request.precision == "fp16" else "")
        builds = itertools.count()
        # Kernels without a record get the default the family's cost model ranks best, where the
        # database holds one and `cost_model.rank_defaults` asks for it (CPU; otherwise the plain
        # default sample).
        ranking = settings.cost_model.transfer and settings.cost_model.rank_defaults and target.kind.name == "llvm"
        start = start_model(database, progress) if ranking else None
        ranker = default_ranker(start.trained, target) if start is not None and start.trained is not None else None

        def build(withheld: set[int]) -> tuple[Compiled, Path, TVMModel]:
            """The module, with the records of the `withheld` tasks replaced by default schedules."""
            database.withheld = {wid for i in withheld for wid in database.workload_ids(tasks[i].dispatched[0])}
            try:
                with stage("compile"):
                    built = compile_tuned(plan.fused, target, database, cuda_graph=request.cuda_graph,
                                          ranker=ranker, storage=storage)
                    path = Path(tmp) / f"model-{next(builds)}.so"
                    built.executable.export_library(str(path))
                    return built, path, TVMModel(path, names, device)
            finally:
                database.withheld = set()

        def verify(candidate: TVMModel) -> tuple[list[Any], Comparison]:
            with stage("verify"):
                prepared = candidate.prepare(inputs)
                return prepared, compare(candidate.run(prepared), ref.outputs, out_names, atol, rtol, hint, ref.name)

        progress.message("compiling with the database and default schedules")
        compiled, lib_path, tvm_model = build(set())
        blame = _Blame()
        try:
            args, comparison = verify(tvm_model)
        except VerificationError as failure:
            blame = _blame(job, plan, failure, build, verify)
            compiled, lib_path, tvm_model = build(set(blame.withheld))
            args, comparison = verify(tvm_model)
        served = _Module(compiled, lib_path, tvm_model, args, comparison)
        # Tasks the database holds no usable record for (the choice below may leave out more).
        no_record = compiled.defaults
        choice, defaults = KernelChoice(), None
        if threads and settings.compile.in_model_choice:
            served, defaults, choice = _choose_kernels(job, plan, served, set(blame.withheld), build, verify)
        if defaults is served:
            defaults = None  # no record left: the module served is the defaults-only one

        with stage("time"):
            m = settings.measure
            busy = None
            if threads:
                busy = wait_for_quiet_cpu(m.quiet_wait_s, m.quiet_busy_percent)
                if busy is not None and busy >= m.quiet_busy_percent:
                    progress.message(f"the CPUs are {busy:.0f}% busy with other work: the timings include its noise")
            progress.message("timing tuned, untuned and ONNX Runtime")
            # Tuned module and ONNX Runtime timed in alternation, so their ratio holds when the
            # machine's speed drifts during the timing; on the CPU each engine as several
            # instances, its fastest counting (see fastest_instance_ms).
            count = m.instances if threads else 1

            def instances(module: _Module) -> list[Any]:
                twins = [TVMModel(module.path, names, device) for _ in range(count - 1)]
                runs = [(module.model, module.args)] + [(t, t.prepare(inputs)) for t in twins]
                return [(lambda t=t, a=a: t.call(a)) for t, a in runs]

            # The defaults-only module (where records were served) is timed beside them: the
            # faster of the two is served, so tuning never leaves the model slower than its
            # default schedules would.
            engines = [instances(served)] + ([instances(defaults)] if defaults else [])
            if ref.ort:
                orts = [ref.ort] + [ref.ort.another() for _ in range(count - 1)]
                engines.append([(lambda o=o: o.run(inputs)) for o in orts])
            timed = fastest_instance_ms(engines, m.model_runs, m.model_min_seconds)
            tuned_ms, ort_ms = timed[0][0], (timed[-1][0] if ref.ort else None)
            instance_ms = {"tuned": timed[0][1], "onnxruntime": timed[-1][1] if ref.ort else None}
            defaults_ms, records_ms = (timed[1][0] if defaults else None), None
            if defaults and defaults_ms < tuned_ms:
                try:
                    if defaults.comparison is None:
                        defaults.args, defaults.comparison = verify(defaults.model)
                    progress.message(f"the default schedules alone ran faster ({defaults_ms:.3f} ms) than with the "
                                     f"tuned records ({tuned_ms:.3f} ms): serving them")
                    served, records_ms, tuned_ms = defaults, tuned_ms, defaults_ms
                    instance_ms["tuned"] = timed[1][1]
                except VerificationError as failure:
                    progress.message(f"the default schedules alone ran faster but {failure}: serving the records")
            compiled, lib_path, comparison = served.compiled, served.path, served.comparison
            untuned_ms = None
            if request.measure_untuned:
                untuned = TVMModel(compile_untuned(job.relax_mod, target), names, device)
                untuned_args = untuned.prepare(inputs)
                untuned_ms = median_ms(lambda: untuned.call(untuned_args), m.model_runs, m.model_min_seconds)
        data = lib_path.read_bytes()
    artifact = out_dir / "model.so"
    _write_atomic(artifact, data)

    report: dict[str, Any] = {
        "model": model.name,
        "source": model.source,
        "input_shapes": {k: list(v) for k, v in model.input_shapes.items()},
        "target": plan.target_dict,
        "hardware": database.provenance.fingerprint,
        "db": redact_url(job.db_url),
        "trials": tuned.trials,
        "tasks": len(tasks),
        "tasks_from_db": len(tasks) - len(plan.to_tune),
        "tasks_from_other_teams": plan.from_other_teams,
        "tasks_refined": plan.refined if tuned.trials else 0,
        "tasks_warm_started": len(plan.warm) if tuned.trials else 0,
        "tasks_tuned": tuned_now,
        "tasks_default_schedule": no_record.total,
        # CUDA: tasks whose dlight schedule was measured beside the search (tuning keeps it
        # where nothing it found was faster).
        "tasks_default_measured": tuned.defaults_measured,
        "cluster": tuned.cluster,
        "default_schedules": no_record.as_dict(),
        "tuning_seconds": round(tuned.seconds, 3),
        "total_seconds": round(time.perf_counter() - job.t_start, 3),
        # tuned: the module written. defaults_only: the same with every searched record left out,
        # where one was served (timed beside it; the faster of the two is written: `served_defaults_only`).
        "latency_ms": {"untuned": untuned_ms, "tuned": tuned_ms, "onnxruntime": ort_ms,
                       "defaults_only": defaults_ms, "with_records": records_ms},
        "served_defaults_only": records_ms is not None,
        # CPU: the tasks served a searched record, their kernels timed inside the model against
        # their default schedules; those whose defaults ran faster there were built without it.
        "kernel_choice": choice.as_dict(),
        # Each instance's median (module VMs, ORT sessions); latency_ms has the fastest.
        "instance_latency_ms": instance_ms,
        # CPU: how busy the machine's CPUs were with other work when the timing started.
        "cpu_busy_percent_before_timing": busy,
        "speedup": {
            "vs_untuned": (untuned_ms / tuned_ms) if untuned_ms else None,
            "vs_onnxruntime": (ort_ms / tuned_ms) if ort_ms else None,
        },
        "max_abs_error": comparison.max_abs_error,
        "precision": request.precision,
        "fast_math": request.fast_math,
        # CPU: how activations share memory ("reuse", "per-shape" or "per-size-RATIO";
        # tuner/compile/storage_plan.py).
        "storage_plan": storage,
        "winograd_kernels": winograd.kernels(plan.fused),
        "split_k_kernels": split_k.kernels(plan.fused),
        # fp16 is checked against the fp32 reference, with the looser fp16 tolerance.
        "tolerance": {"atol": atol, "rtol": rtol, "reference": f"{ref.name} fp32"},
        "verify": {
            "reference": ref.name,
            "why_not_onnxruntime": ref.fallback_reason,
            "inputs": job.inputs_source,
            "atol": atol, "rtol": rtol,
        },
        "verified": comparison.verified,
        # Records whose kernels were checked against their workloads' before being served, and
        # the ones rejected (wrong output, or a check that could not build or run them).
        "record_checks": checks.as_dict(),
        # Each tuned task's best records timed again by turns when its search ended: the one
        # served is the fastest by that timing (tuner/search/final_timing.py).
        "final_timing": tuned.final_timing.as_dict(),
        "records_rejected_wrong_output": checks.wrong + len(blame.records),
        # Tasks whose checked records still made the model fail verification (bisection): the
        # module was built with their default schedules and the records were marked wrong.
        "records_blamed": blame.records,
        "tasks_withheld": [tasks[i].task_name for i in blame.withheld],
        # The cost model the search started from (trained on the database for this hardware
        # family, or none), whether a retraining was started after this run, and whether it
        # ranked the default schedules of kernels without a record (`default_schedules.ranked`:
        # how many it moved off the plain default sample).
        "cost_model": {**tuned.cost_model, "ranked_defaults": ranker is not None},
        "loops": compiled.loops,
        "cuda_graph": compiled.cuda_graph,
        # TVM runtime threads the module was timed with (CPU; set TVM_NUM_THREADS to the same
        # when loading model.so: TVM's default on x86 is half the logical CPUs).
        "threads": current_threads() if threads else None,
        "artifact": {
            "path": str(artifact.resolve()),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        },
        "team": job.team,
        "private": job.private,
        "job_id": job.job_id,
        "seed": request.seed,
        "tvm_version": tvm.__version__,
        "tuner_version": __version__,
    }
    _write_atomic(out_dir / "report.json", json.dumps(report, indent=2).encode())
    return report
