"""The service's storage folder: uploads, and per job its model, log, report and module.

Paths are made only from job ids the service generated (checked here), never from names a
client sent, so nothing can be written outside the folder.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path

from tuner.errors import TunerError

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_job_id() -> str:
    return uuid.uuid4().hex


class Storage:
    def __init__(self, root: Path) -> None:
        try:
            root.mkdir(parents=True, exist_ok=True)
            (root / "tmp").mkdir(exist_ok=True)
            (root / "jobs").mkdir(exist_ok=True)
        except OSError as exc:
            raise TunerError(f"cannot create the storage folder {root}: {exc.strerror}") from None
        self.root = root.resolve()

    def new_upload(self) -> Path:
        """A fresh temporary path for an upload in progress."""
        return self.root / "tmp" / f"{uuid.uuid4().hex}.part"

    def job_dir(self, job_id: str) -> Path:
        if not _JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / "jobs" / job_id

    def model_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "model.onnx"

    def inputs_path(self, job_id: str) -> Path:
        """The job's verification inputs (.npz), when the submission gave some."""
        return self.job_dir(job_id) / "inputs.npz"

    def out_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "out"

    def artifact_path(self, job_id: str) -> Path:
        return self.out_dir(job_id) / "model.so"

    def report_path(self, job_id: str) -> Path:
        return self.out_dir(job_id) / "report.json"

    def log_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "job.log"

    def error_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "error.txt"
