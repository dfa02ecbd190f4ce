"""The worker that takes jobs from the queue and runs each in a process of its own.

A worker (a thread of `tuner serve`) claims a job, starts `tuner.jobs.execute` in a new
process group that dies with the service, renews the job's lease while the process lives, and
writes the job's end: the report when it succeeded, the reason when it failed. When the lease
renewal finds the job no longer its own (cancelled, or requeued after the worker stalled), the
process gets Ctrl-C, then SIGKILL after a grace period; records measured so far stay.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from tuner.config import ServeSettings
from tuner.db.jobs import claim_next, finish, get_job, reap_expired, release, renew_lease
from tuner.db.models import Job

from .storage import Storage, file_sha256

log = logging.getLogger("tuner.jobs")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class JobWorker(threading.Thread):
    def __init__(self, engine: Engine, db_url: str, storage: Storage, serve: ServeSettings,
                 ray_address: str | None = None, on_trials: Callable[[int], None] | None = None) -> None:
        super().__init__(daemon=True, name="tuner-job-worker")
        self.engine, self.db_url, self.storage, self.serve = engine, db_url, storage, serve
        self.ray_address = ray_address
        self.on_trials = on_trials or (lambda _n: None)
        self.worker_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stopping = threading.Event()
        self.current: str | None = None

    def stop(self) -> None:
        """Stop after the current job is handed back to the queue (its process is stopped)."""
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                for job_id, status in reap_expired(self.engine, self.serve.max_attempts):
                    log.warning("job %s lost its worker: %s", job_id, status)
                job = claim_next(self.engine, self.worker_id, self.serve.lease_s)
            except SQLAlchemyError as exc:
                log.error("job queue unreachable: %s", exc)
                job = None
            if job is None:
                self._stopping.wait(self.serve.poll_s)
                continue
            self.current = job.id
            try:
                self._run(job)
            except Exception:  # noqa: BLE001 - one job's trouble must not end the worker
                log.exception("job %s: worker error", job.id)
                self._finish(job.id, "failed", error="the service's worker failed while running this job")
            finally:
                self.current = None

    def _command(self, job: Job) -> list[str]:
        cmd = [sys.executable, "-m", "tuner.jobs.execute", job.id, "--db", self.db_url,
               "--storage", str(self.storage.root)]
        if self.ray_address:
            cmd += ["--ray-address", self.ray_address]
        return cmd

    def _run(self, job: Job) -> None:
        log.info("job %s (%s, team %s): started, attempt %d", job.id, job.name, job.team, job.attempts)
        self.storage.error_path(job.id).unlink(missing_ok=True)
        with open(self.storage.log_path(job.id), "ab") as logfile:
            proc = subprocess.Popen(
                self._command(job), stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        last_beat = time.monotonic()
        trials_seen = job.trials_done
        while True:
            try:
                proc.wait(timeout=min(1.0, self.serve.heartbeat_s))
                break
            except subprocess.TimeoutExpired:
                pass
            if self._stopping.is_set():
                self._stop_process(proc)
                release(self.engine, job.id, self.worker_id)
                log.info("job %s: handed back to the queue (service stopping)", job.id)
                return
            if time.monotonic() - last_beat < self.serve.heartbeat_s:
                continue
            last_beat = time.monotonic()
            try:
                owned = renew_lease(self.engine, job.id, self.worker_id, self.serve.lease_s)
                current = get_job(self.engine, job.id)
            except SQLAlchemyError as exc:
                log.error("job %s: lease not renewed: %s", job.id, exc)
                continue
            if current is not None and current.trials_done > trials_seen:
                self.on_trials(current.trials_done - trials_seen)
                trials_seen = current.trials_done
            if not owned:
                state = current.status if current else "gone"
                log.info("job %s is %s: stopping its process", job.id, state)
                self._stop_process(proc)
                return
        _kill_group(proc, signal.SIGKILL)  # its builder/runner processes, if any are left
        self._ended(job, proc.returncode, trials_seen)

    def _stop_process(self, proc: subprocess.Popen) -> None:
        """Ctrl-C (records are committed as measured), then SIGKILL after the grace period."""
        _kill_group(proc, signal.SIGINT)
        try:
            proc.wait(timeout=self.serve.cancel_grace_s)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(proc, signal.SIGKILL)
        proc.wait()

    def _ended(self, job: Job, code: int, trials_seen: int) -> None:
        report_path = self.storage.report_path(job.id)
        if code == 0 and report_path.is_file():
            report = json.loads(report_path.read_text())
            artifact = self.storage.artifact_path(job.id)
            if not artifact.is_file() or file_sha256(artifact) != report["artifact"]["sha256"]:
                self._finish(job.id, "failed", error="the compiled module does not match its checksum")
                return
            # Clients download through the API; the server's paths are not theirs to know.
            report["artifact"]["path"] = f"/v1/jobs/{job.id}/artifact"
            report["source"] = f"upload sha256:{job.model_sha256}"
            self.on_trials(max(0, report["trials"] - trials_seen))
            self._finish(job.id, "succeeded", report=report)
            return
        error_file = self.storage.error_path(job.id)
        if error_file.is_file():
            error = error_file.read_text().strip() or f"the job's process exited with code {code}"
        elif code < 0:
            error = f"the job's process died ({signal.Signals(-code).name}); see the service log"
        else:
            error = f"the job's process exited with code {code} and no report"
        self._finish(job.id, "failed", error=error)

    def _finish(self, job_id: str, status: str, **kwargs: object) -> None:
        if finish(self.engine, job_id, self.worker_id, status, **kwargs):
            log.info("job %s: %s", job_id, status)
        else:
            log.info("job %s: no longer this worker's (cancelled or requeued); %s not written", job_id, status)
