"""The HTTP API of `tuner serve` (FastAPI). The contract is README's "Serve" section.

Requests are answered from the database (jobs, keys, records) and the storage folder; the
tuning itself happens in job workers (tuner.jobs), never in a request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from tuner import __version__
from tuner.config import Settings
from tuner.db.admin import visible_records
from tuner.db.engine import error_reason, make_engine, redact_url
from tuner.db.jobs import FINAL, STATUSES, as_utc, cancel, find_by_idempotency_key, get_job, insert_job, list_jobs, team_load
from tuner.db.keys import team_for_key
from tuner.db.migrate import upgrade
from tuner.db.models import Job, utcnow
from tuner.errors import TunerError
from tuner.jobs.storage import Storage, file_sha256, new_job_id
from tuner.jobs.worker import JobWorker

from .metrics import Metrics
from .submission import check_inputs, check_model, job_spec
from .uploads import inputs_upload, read_submission

log = logging.getLogger("tuner.service")


@dataclass
class ServiceConfig:
    db_url: str
    storage_dir: Path
    settings: Settings
    ray_address: str | None = None
    # Job workers in this process; 0 serves the API only (another process runs the jobs).
    workers: int = 1


def _iso(value: Any) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value is not None else None


def job_body(job: Job, with_report: bool = True) -> dict[str, Any]:
    """A job as the API shows it."""
    url = f"/v1/jobs/{job.id}"
    body: dict[str, Any] = {
        "id": job.id,
        "name": job.name,
        "team": job.team,
        "status": job.status,
        "target": json.loads(job.target_json),
        "trials": job.trials,
        "refine": job.refine,
        "input_shapes": json.loads(job.input_shapes_json),
        "model": {"sha256": job.model_sha256, "bytes": job.model_bytes},
        "progress": {
            "trials_done": job.trials_done,
            "trials_total": job.trials_total,
            "best_latency_ms": job.best_latency_ms,
            "tasks": job.tasks,
            "tasks_from_db": job.tasks_from_db,
        },
        "attempts": job.attempts,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "error": job.error if job.status != "succeeded" else None,
        "links": {"self": url, "events": f"{url}/events", "report": f"{url}/report", "artifact": f"{url}/artifact"},
    }
    if job.status == "succeeded":
        body["artifact"] = {"url": f"{url}/artifact", "sha256": job.artifact_sha256, "bytes": job.artifact_bytes}
        if with_report:
            body["report"] = json.loads(job.report_json) if job.report_json else None
    return body


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


_bearer = HTTPBearer(auto_error=False, description="A team's API key (`tuner keys create --team NAME`)")


def team_of(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The team whose API key came with the request; 401 otherwise."""
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials:
        raise HTTPException(401, "missing API key: send `Authorization: Bearer KEY`", headers=unauthorized)
    team = team_for_key(request.app.state.engine, credentials.credentials)
    if team is None:
        raise HTTPException(401, "invalid or revoked API key", headers=unauthorized)
    return team


Team = Annotated[str, Depends(team_of)]


def create_app(config: ServiceConfig) -> FastAPI:
    serve = config.settings.serve
    engine = make_engine(config.db_url)
    upgrade(engine)
    storage = Storage(config.storage_dir)
    metrics = Metrics(engine)
    workers = [JobWorker(engine, config.db_url, storage, serve, config.ray_address, metrics.trials.inc)
               for _ in range(config.workers)]
    max_model_bytes = int(serve.max_upload_mb * 2**20)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for worker in workers:
            worker.start()
        yield
        for worker in workers:
            worker.stop()
        for worker in workers:
            await run_in_threadpool(worker.join)

    app = FastAPI(title="tuner", version=__version__, lifespan=lifespan,
                  description="Submit ONNX models to be tuned with TVM MetaSchedule; download verified compiled modules.")
    app.state.engine = engine  # for team_of

    def own_job(job_id: str, team: str) -> Job:
        job = get_job(engine, job_id, team)
        if job is None:  # another team's job is as absent as a job that never was
            raise HTTPException(404, f"no job {job_id[:64]}")
        return job

    @app.middleware("http")
    async def measure(request: Request, call_next):  # noqa: ANN001, ANN202 - Starlette's types
        elapsed = metrics.timer()
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.observe(request.method, getattr(route, "path", "unmatched"), response.status_code, elapsed())
        return response

    @app.exception_handler(SQLAlchemyError)
    async def database_down(_request: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.error("database error: %s", exc)
        return JSONResponse({"detail": f"the database is unavailable: {error_reason(exc)}"}, status_code=503,
                            headers={"Retry-After": str(serve.retry_after_s)})

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["service"])
    def readyz() -> JSONResponse:
        """The database answers, and the Ray cluster when one is configured."""
        checks: dict[str, str] = {}
        ready = True
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except SQLAlchemyError as exc:
            checks["database"], ready = f"unreachable: {error_reason(exc)}", False
        if config.ray_address in (None, "", "local", "off"):
            # Jobs without an address follow the config: by default a local Ray per job.
            per_job = config.ray_address == "local" or (
                not config.ray_address and config.settings.workers.backend == "ray")
            checks["ray"] = "local (started per job)" if per_job else "not used"
        else:
            from tuner.cluster.ray_backend import ClusterError, check_reachable

            try:
                check_reachable(config.ray_address, timeout_s=2.0)
                checks["ray"] = "ok"
            except ClusterError as exc:
                checks["ray"], ready = str(exc), False
        checks["workers"] = str(sum(w.is_alive() for w in workers))
        return JSONResponse({"ready": ready, "checks": checks, "db": redact_url(config.db_url)},
                            status_code=200 if ready else 503)

    @app.get("/metrics", tags=["service"])
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/jobs", status_code=202, tags=["jobs"],
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["model", "trials"],
                  "properties": {
                      "model": {"type": "string", "format": "binary", "description": "the .onnx file"},
                      "target": {"type": "string", "description": '"cpu", "cuda" or a TVM target JSON dict'},
                      "trials": {"type": "integer", "minimum": 0},
                      "input_shapes": {"type": "string", "description": '{"input": [1, 3, 224, 224]}'},
                      "name": {"type": "string"},
                      "refine": {"type": "boolean", "description": "also tune kernels the database already serves"},
                      "inputs": {"type": "string", "format": "binary",
                                 "description": "optional .npz (numpy.savez), one array per model input: "
                                                "verify and time on these instead of random inputs"},
                  }}}}}})
    async def submit(request: Request, team: Team,
                     idempotency_key: Annotated[str | None, Header(max_length=128)] = None) -> JSONResponse:
        """Upload a model to tune; answers at once with the queued job."""
        upload = storage.new_upload()
        try:
            form = await read_submission(request.headers.get("content-type", ""), request.headers.get("content-length"),
                                         request.stream(), upload, max_model_bytes)
            spec = await run_in_threadpool(job_spec, form.fields, form.filename, serve.max_active_trials_per_team)
            request_sha = spec.request_sha256(form.model_sha256 + (f":{form.inputs_sha256}" if form.inputs_path else ""))
            if idempotency_key:
                earlier = await run_in_threadpool(find_by_idempotency_key, engine, team, idempotency_key)
                if earlier is not None:
                    return _replay(earlier, request_sha)
            model = await run_in_threadpool(check_model, upload, spec.input_shapes)
            if form.inputs_path is not None:
                await run_in_threadpool(check_inputs, form.inputs_path, model)
            load = await run_in_threadpool(team_load, engine, team)
            if load.active_jobs >= serve.max_active_jobs_per_team or (
                    load.active_trials + spec.trials > serve.max_active_trials_per_team):
                raise HTTPException(
                    429, f"team {team} has {load.active_jobs} job(s) queued or running with {load.active_trials} "
                         f"trials to go; the limits are {serve.max_active_jobs_per_team} jobs and "
                         f"{serve.max_active_trials_per_team} trials: retry when a job ends",
                    headers={"Retry-After": str(serve.retry_after_s)})
            job_id = new_job_id()
            job_dir = storage.job_dir(job_id)
            job_dir.mkdir(parents=True)
            os.replace(upload, storage.model_path(job_id))
            if form.inputs_path is not None:
                os.replace(form.inputs_path, storage.inputs_path(job_id))
            job = Job(id=job_id, team=team, name=spec.name, status="queued", target_json=json.dumps(spec.target),
                      trials=spec.trials, refine=spec.refine, input_shapes_json=json.dumps(spec.input_shapes),
                      model_sha256=form.model_sha256, model_bytes=form.model_bytes, request_sha256=request_sha,
                      idempotency_key=idempotency_key or None, created_at=utcnow(), attempts=0, trials_done=0,
                      trials_total=spec.trials)
            try:
                job, created = await run_in_threadpool(insert_job, engine, job)
            except BaseException:
                shutil.rmtree(job_dir, ignore_errors=True)
                raise
            if not created:  # a concurrent request with the same key won the race
                shutil.rmtree(job_dir, ignore_errors=True)
                return _replay(job, request_sha)
            log.info("job %s queued for team %s (%s, %d trials)", job.id, team, spec.name, spec.trials)
            return JSONResponse(job_body(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})
        finally:
            upload.unlink(missing_ok=True)
            inputs_upload(upload).unlink(missing_ok=True)

    def _replay(job: Job, request_sha: str) -> JSONResponse:
        if job.request_sha256 != request_sha:
            raise HTTPException(422, "this Idempotency-Key was used for a different request (another model or "
                                     "parameters): use a new key")
        return JSONResponse(job_body(job), status_code=202,
                            headers={"Location": f"/v1/jobs/{job.id}", "Idempotent-Replayed": "true"})

    @app.get("/v1/jobs", tags=["jobs"])
    def jobs(team: Team, status: Literal[STATUSES] | None = None,  # type: ignore[valid-type]
             limit: Annotated[int, Query(ge=1, le=100)] = 20, offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
        """The caller's team's jobs, newest first."""
        rows, total = list_jobs(engine, team, status, limit, offset)
        nxt = offset + len(rows) if offset + len(rows) < total else None
        return {"jobs": [job_body(j, with_report=False) for j in rows], "total": total, "limit": limit,
                "offset": offset, "next_offset": nxt}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def job(job_id: str, team: Team) -> dict[str, Any]:
        return job_body(own_job(job_id, team))

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"])
    def cancel_job(job_id: str, team: Team) -> dict[str, Any]:
        """Cancel a queued or running job; the records it measured stay in the database."""
        before = own_job(job_id, team)
        if before.status in FINAL:
            raise HTTPException(409, f"job {job_id} already {before.status}: nothing to cancel")
        after = cancel(engine, job_id, team)
        if after is not None and after.status != "cancelled":
            raise HTTPException(409, f"job {job_id} {after.status} before it could be cancelled")
        return job_body(after)

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"])
    async def job_events(job_id: str, team: Team, request: Request) -> StreamingResponse:
        """Server-sent events: `progress` whenever the job changes, `end` (with the report) when it ends."""
        await run_in_threadpool(own_job, job_id, team)

        async def stream() -> AsyncIterator[str]:
            last, last_sent = None, time.monotonic()
            while True:
                current = await run_in_threadpool(get_job, engine, job_id, team)
                body = job_body(current, with_report=False)
                snapshot = json.dumps(body, sort_keys=True)
                if snapshot != last:
                    yield _sse("progress", body)
                    last, last_sent = snapshot, time.monotonic()
                if current.status in FINAL:
                    yield _sse("end", job_body(current))
                    return
                if time.monotonic() - last_sent > 15:
                    yield ": keep-alive\n\n"
                    last_sent = time.monotonic()
                if await request.is_disconnected():
                    return
                await asyncio.sleep(serve.poll_s)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _finished(job_id: str, team: str) -> Job:
        current = own_job(job_id, team)
        if current.status != "succeeded":
            raise HTTPException(409, f"job {job_id} is {current.status}: only a succeeded job has a report and a module")
        return current

    @app.get("/v1/jobs/{job_id}/report", tags=["jobs"])
    def job_report(job_id: str, team: Team) -> dict[str, Any]:
        return json.loads(_finished(job_id, team).report_json)

    @app.get("/v1/jobs/{job_id}/artifact", tags=["jobs"], response_class=FileResponse)
    def job_artifact(job_id: str, team: Team) -> FileResponse:
        """The compiled module (.so); header X-Artifact-SHA256 is its checksum (also in the report)."""
        current = _finished(job_id, team)
        path = storage.artifact_path(job_id)
        if not path.is_file() or file_sha256(path) != current.artifact_sha256:
            log.error("job %s: artifact missing or corrupted on disk", job_id)
            raise HTTPException(410, f"the module of job {job_id} is no longer intact in storage: submit the job again")
        return FileResponse(path, media_type="application/octet-stream", filename=f"{current.name}.so",
                            headers={"X-Artifact-SHA256": current.artifact_sha256, "ETag": f'"{current.artifact_sha256}"'})

    @app.get("/v1/records", tags=["records"])
    def records(team: Team, workload: Annotated[str | None, Query(pattern=r"^\d{1,20}$",
                                                                     description="MetaSchedule structural hash")] = None,
                hardware: Annotated[str | None, Query(max_length=64)] = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 100, offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
        """Tuning records the team may read: every shared one and its own private ones."""
        shash = int(workload) if workload is not None else None
        if shash is not None and shash >= 1 << 64:
            raise HTTPException(422, "`workload` is a 64-bit structural hash")
        rows, total = visible_records(engine, team, shash, hardware, limit, offset)
        return {"records": rows, "total": total, "limit": limit, "offset": offset}

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the service log"}, status_code=500)

    @app.exception_handler(TunerError)
    async def tuner_error(_request: Request, exc: TunerError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    return app
