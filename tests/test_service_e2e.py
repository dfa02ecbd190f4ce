"""`tuner serve` as a real process: two teams, the CLI client, abuse, cancellation, a restart."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from tests.conftest import tiny_env
from tests.onnx_models import external_data_outside, matmul_bias_relu, save, small_convnet
from tuner.db.engine import make_engine
from tuner.db.models import TuningRecord

TUNER = [sys.executable, "-m", "tuner.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, tmp: Path, **env: str) -> None:
        self.tmp = tmp
        self.env = tiny_env(tmp)
        self.env.update(TUNER_STORAGE_DIR=str(tmp / "storage"), TUNER_SERVE__POLL_S="0.3",
                        TUNER_SERVE__HEARTBEAT_S="0.5", TUNER_SERVE__CANCEL_GRACE_S="10", **env)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.tmp / f"serve-{self.starts}.log", "wb")
        self.proc = subprocess.Popen([*TUNER, "serve", "--port", str(self.port)], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.tmp / f"serve-{self.starts}.log").read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError("tuner serve did not come up")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)

    def key(self, team: str) -> str:
        done = subprocess.run([*TUNER, "keys", "create", "--team", team], env=self.env, capture_output=True,
                              text=True, check=True)
        return done.stdout.strip().splitlines()[-1]

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def wait(self, client: httpx.Client, job_id: str, until: object, timeout_s: float = 300) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if until(job):
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} never got there: {job}")


def _job_processes(job_id: str) -> list[str]:
    done = subprocess.run(["pgrep", "-f", f"tuner.jobs.execute {job_id}"], capture_output=True, text=True)
    return done.stdout.split()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path, TUNER_SERVE__MAX_UPLOAD_MB="0.5", TMPDIR=str(tmp_path / "system-tmp"))
    (tmp_path / "system-tmp").mkdir()
    srv.start()
    yield srv
    srv.stop()


def test_two_teams_share_the_database_not_their_jobs(server: Server, tmp_path: Path) -> None:
    model = save(matmul_bias_relu(), tmp_path / "mm.onnx")
    vision_key, speech_key = server.key("vision"), server.key("speech")
    vision, speech = server.client(vision_key), server.client(speech_key)

    # Abuse first, before any job process runs: each a 4xx, nothing written anywhere but storage.
    files = {"model": ("m.onnx", model.read_bytes())}
    big = {"model": ("big.onnx", os.urandom(600 * 1024))}
    assert vision.post("/v1/jobs", data={"trials": "1"}, files=big).status_code == 413
    assert vision.post("/v1/jobs", data={"trials": "1"}, files={"model": ("x.onnx", b"not onnx")}).status_code == 422
    traversal = vision.post("/v1/jobs", data={"trials": "1"},
                            files={"model": ("../../x.onnx", external_data_outside().SerializeToString())})
    assert traversal.status_code == 422 and "external data" in traversal.json()["detail"]
    assert httpx.post(f"{server.url}/v1/jobs", data={"trials": "1"}, files=files).status_code == 401
    assert httpx.post(f"{server.url}/v1/jobs", data={"trials": "1"}, files=files,
                      headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert list((tmp_path / "system-tmp").iterdir()) == []
    assert list((tmp_path / "storage" / "tmp").iterdir()) == [] and list((tmp_path / "storage" / "jobs").iterdir()) == []
    assert not (tmp_path / "x.onnx").exists()

    # Team vision: `tuner submit --wait` uploads, follows the events, downloads and checks the module.
    out = tmp_path / "vision-out"
    done = subprocess.run([*TUNER, "submit", str(model), "--server", server.url, "--key", vision_key,
                           "--trials", "8", "--wait", "--out", str(out)], env=server.env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads((out / "report.json").read_text())
    data = (out / "model.so").read_bytes()
    assert hashlib.sha256(data).hexdigest() == report["artifact"]["sha256"] and report["trials"] > 0

    import tvm
    from tvm import relax

    x = np.random.default_rng(0).standard_normal((16, 64)).astype("float32")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out / "model.so")), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    import onnxruntime as ort

    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    # Team speech: the identical job is served from the database, and vision's job is invisible.
    done = subprocess.run([*TUNER, "submit", str(model), "--server", server.url, "--key", speech_key,
                           "--trials", "8", "--wait", "--json", "--out", str(tmp_path / "speech-out")],
                          env=server.env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    speech_job = json.loads(done.stdout)
    assert speech_job["report"]["trials"] == 0
    assert speech_job["report"]["tasks_from_db"] == speech_job["report"]["tasks"] == speech_job["report"]["tasks_from_other_teams"]
    vision_job_id = report["job_id"]
    assert speech.get(f"/v1/jobs/{vision_job_id}").status_code == 404
    assert speech.get(f"/v1/jobs/{vision_job_id}/artifact").status_code == 404
    assert vision.get(f"/v1/jobs/{vision_job_id}").json()["status"] == "succeeded"

    # Cancelling a running job stops its process; the records it measured stay.
    conv = save(small_convnet(), tmp_path / "conv.onnx")
    job = vision.post("/v1/jobs", data={"trials": "400"}, files={"model": ("conv.onnx", conv.read_bytes())}).json()
    server.wait(vision, job["id"], lambda j: j["progress"]["trials_done"] > 0)
    cancelled = vision.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    deadline = time.monotonic() + 30
    while _job_processes(job["id"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _job_processes(job["id"]) == []
    with make_engine(server.env["TUNER_DB_URL"]).connect() as conn:
        kept = conn.scalar(select(func.count()).select_from(TuningRecord).where(TuningRecord.job_id == job["id"]))
    assert kept > 0
    assert vision.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"


def test_a_job_survives_a_killed_service(tmp_path: Path) -> None:
    server = Server(tmp_path, TUNER_SERVE__LEASE_S="3")
    server.start()
    try:
        key = server.key("vision")
        client = server.client(key)
        conv = save(small_convnet(), tmp_path / "conv.onnx")
        job = client.post("/v1/jobs", data={"trials": "24"}, files={"model": ("conv.onnx", conv.read_bytes())}).json()
        server.wait(client, job["id"], lambda j: j["status"] == "running" and j["progress"]["tasks"] is not None)
        server.stop(signal.SIGKILL)  # no clean-up at all: the lease must run out
        deadline = time.monotonic() + 15
        while _job_processes(job["id"]) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert _job_processes(job["id"]) == [], "the job's process outlived its service"
        server.start()
        done = server.wait(client, job["id"], lambda j: j["status"] in ("succeeded", "failed", "cancelled"))
        assert done["status"] == "succeeded", done["error"]
        assert done["attempts"] == 2 and done["report"]["verified"]
    finally:
        server.stop()
