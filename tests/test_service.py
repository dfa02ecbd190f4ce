"""`tuner serve` through FastAPI's TestClient: every route, every refusal, one real tuning job."""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import TINY
from tests.onnx_models import dynamic_batch, external_data_outside, matmul_bias_relu, save
from tuner.config import ServeSettings, Settings
from tuner.db.engine import make_engine
from tuner.db.keys import create_key, revoke_key
from tuner.service.app import ServiceConfig, create_app

FAST = dict(poll_s=0.2, heartbeat_s=0.5, lease_s=5.0, cancel_grace_s=10.0)


def _settings(**serve: object) -> Settings:
    return Settings(**TINY, serve=ServeSettings(**{**FAST, **serve}))


def _model_bytes(model: onnx.ModelProto, tmp: Path) -> bytes:
    return save(model, tmp / "m.onnx").read_bytes()


class Service:
    """An app, its storage, and keys of two teams."""

    def __init__(self, tmp: Path, workers: int, db_url: str | None = None, **serve: object) -> None:
        self.db_url = db_url or f"sqlite:///{tmp / 'service.sqlite'}"
        self.storage = tmp / "storage"
        self.app = create_app(ServiceConfig(db_url=self.db_url, storage_dir=self.storage,
                                            settings=_settings(**serve), workers=workers))
        engine = make_engine(self.db_url)
        self.vision_key = create_key(engine, "vision")[0]
        self.speech_key = create_key(engine, "speech")[0]
        self.model = _model_bytes(matmul_bias_relu(), tmp)

    def auth(self, team: str = "vision") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.vision_key if team == 'vision' else self.speech_key}"}

    def submit(self, client: TestClient, team: str = "vision", model: bytes | None = None,
               headers: dict[str, str] | None = None, inputs: bytes | None = None, **fields: str):
        data = {"trials": "8", **fields}
        files = {"model": ("m.onnx", model if model is not None else self.model, "application/octet-stream")}
        if inputs is not None:
            files["inputs"] = ("x.npz", inputs, "application/octet-stream")
        return client.post("/v1/jobs", headers={**self.auth(team), **(headers or {})}, data=data, files=files)

    def leftovers(self) -> list[Path]:
        """Uploads that were not cleaned up."""
        return list((self.storage / "tmp").iterdir())


def _wait(client: TestClient, job_id: str, auth: dict[str, str], done: tuple[str, ...], timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        if body["status"] in done:
            return body
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {body['status']} after {timeout_s} s")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[Service, TestClient]]:
    """The HTTP layer alone: jobs are queued, no worker takes them."""
    service = Service(tmp_path, workers=0, max_active_jobs_per_team=3, max_active_trials_per_team=100)
    with TestClient(service.app) as client:
        yield service, client


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, TestClient, dict]]:
    """One real job, tuned by a worker of the app, followed to its end."""
    service = Service(tmp_path_factory.mktemp("tuned"), workers=1)
    with TestClient(service.app) as client:
        job = service.submit(client, inputs=_npz(x=np.linspace(-1, 1, 16 * 64, dtype=np.float32).reshape(16, 64))).json()
        yield service, client, _wait(client, job["id"], service.auth(), ("succeeded", "failed"))


def test_health_ready_docs_and_metrics(api: tuple[Service, TestClient]) -> None:
    service, client = api
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    assert "/v1/jobs" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    service.submit(client)
    text = client.get("/metrics").text
    assert 'tuner_jobs{status="queued"} 1.0' in text and "tuner_queue_depth 1.0" in text
    assert 'tuner_http_request_duration_seconds_count{method="POST",route="/v1/jobs",status="202"} 1.0' in text


def test_submit_answers_202_with_the_queued_job(api: tuple[Service, TestClient]) -> None:
    service, client = api
    resp = service.submit(client, name="my-net", target='{"kind": "llvm", "num-cores": 1}')
    assert resp.status_code == 202
    job = resp.json()
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["name"] == "my-net" and job["trials"] == 8 and job["refine"] is False
    assert job["target"]["num-cores"] == 1
    assert job["model"]["sha256"] == hashlib.sha256(service.model).hexdigest()
    assert job["progress"] == {"trials_done": 0, "trials_total": 8, "best_latency_ms": None, "tasks": None,
                               "tasks_from_db": None}
    stored = service.storage / "jobs" / job["id"] / "model.onnx"
    assert stored.read_bytes() == service.model and service.leftovers() == []


def test_list_filters_and_pages_only_the_callers_jobs(api: tuple[Service, TestClient]) -> None:
    service, client = api
    ids = [service.submit(client, name=f"n{i}").json()["id"] for i in range(3)]
    service.submit(client, team="speech")
    page = client.get("/v1/jobs?limit=2", headers=service.auth()).json()
    assert page["total"] == 3 and [j["id"] for j in page["jobs"]] == ids[::-1][:2] and page["next_offset"] == 2
    rest = client.get("/v1/jobs?limit=2&offset=2", headers=service.auth()).json()
    assert [j["id"] for j in rest["jobs"]] == ids[:1] and rest["next_offset"] is None
    client.delete(f"/v1/jobs/{ids[0]}", headers=service.auth())
    assert [j["id"] for j in client.get("/v1/jobs?status=cancelled", headers=service.auth()).json()["jobs"]] == ids[:1]
    assert client.get("/v1/jobs?status=bogus", headers=service.auth()).status_code == 422
    assert client.get("/v1/jobs?limit=1000", headers=service.auth()).status_code == 422


def test_idempotency_key_answers_the_same_job(api: tuple[Service, TestClient]) -> None:
    service, client = api
    first = service.submit(client, headers={"Idempotency-Key": "abc"})
    again = service.submit(client, headers={"Idempotency-Key": "abc"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = service.submit(client, headers={"Idempotency-Key": "abc"}, trials="9")
    assert other.status_code == 422 and "different request" in other.json()["detail"]
    # Keys are per team: another team's "abc" is another job.
    assert service.submit(client, team="speech", headers={"Idempotency-Key": "abc"}).json()["id"] != first.json()["id"]
    assert client.get("/v1/jobs", headers=service.auth()).json()["total"] == 1
    assert service.leftovers() == []


def test_cancel_a_queued_job(api: tuple[Service, TestClient]) -> None:
    service, client = api
    job = service.submit(client).json()
    assert client.delete(f"/v1/jobs/{job['id']}", headers=service.auth("speech")).status_code == 404
    resp = client.delete(f"/v1/jobs/{job['id']}", headers=service.auth())
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled" and resp.json()["finished_at"]
    again = client.delete(f"/v1/jobs/{job['id']}", headers=service.auth())
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=service.auth()).text
    assert events.startswith("event: progress") and "event: end" in events
    assert client.get(f"/v1/jobs/{job['id']}/artifact", headers=service.auth()).status_code == 409
    assert client.get(f"/v1/jobs/{job['id']}/report", headers=service.auth()).status_code == 409


def test_limits_per_team_answer_429_with_retry_after(api: tuple[Service, TestClient]) -> None:
    service, client = api
    assert service.submit(client, trials="101").status_code == 422  # never possible: not a 429
    assert service.submit(client, trials="60").status_code == 202
    too_many_trials = service.submit(client, trials="50")
    assert too_many_trials.status_code == 429 and too_many_trials.headers["Retry-After"] == "30"
    assert "trials" in too_many_trials.json()["detail"]
    for _ in range(2):
        assert service.submit(client, trials="1").status_code == 202
    too_many_jobs = service.submit(client, trials="1")
    assert too_many_jobs.status_code == 429 and "3 job(s)" in too_many_jobs.json()["detail"]
    assert service.submit(client, team="speech", trials="1").status_code == 202  # per team
    assert service.leftovers() == []


def test_bad_uploads_are_4xx_and_leave_nothing(api: tuple[Service, TestClient], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    service, client = api
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    cases = {
        "not onnx": (service.submit(client, model=b"\x00garbage" * 100), 422, "not an ONNX model"),
        "external data": (service.submit(client, model=external_data_outside().SerializeToString()), 422, "external data is refused"),
        "dynamic input": (service.submit(client, model=_model_bytes(dynamic_batch(), tmp_path)), 422, "input_shapes"),
        "bad target": (service.submit(client, target="tpu"), 422, "invalid target"),
        "unknown mcpu": (service.submit(client, target='{"kind": "llvm", "mcpu": "; rm -rf /"}'), 422, "unknown mcpu"),
        "too big": (service.submit(client, model=_model_bytes(dynamic_batch(), tmp_path),
                                   input_shapes='{"x": [10000000000000, 8]}'), 422, "GiB available"),
        "bad trials": (service.submit(client, trials="many"), 422, "integer"),
        "bad shapes": (service.submit(client, input_shapes='{"x": [0]}'), 422, "positive ints"),
        "bad refine": (service.submit(client, refine="maybe"), 422, "`refine` must be true or false"),
        "unknown field": (service.submit(client, path="../../x"), 422, "unknown form field"),
        "no model": (client.post("/v1/jobs", headers=service.auth(), data={"trials": "1"},
                                 files={"other": ("a", b"x")}), 422, "unknown form field"),
        "not multipart": (client.post("/v1/jobs", headers=service.auth(), json={"trials": 1}), 415, "multipart"),
        "no key": (client.post("/v1/jobs", files={"model": ("m.onnx", service.model)}), 401, "missing API key"),
        "wrong key": (client.post("/v1/jobs", headers={"Authorization": "Bearer nope"},
                                  files={"model": ("m.onnx", service.model)}), 401, "invalid or revoked"),
    }
    for name, (resp, status, words) in cases.items():
        assert resp.status_code == status, (name, resp.text)
        assert words in resp.json()["detail"] if isinstance(resp.json()["detail"], str) else False, (name, resp.text)
    assert cases["no key"][0].headers["WWW-Authenticate"] == "Bearer"
    assert service.leftovers() == [] and list(system_tmp.iterdir()) == []
    assert not any((service.storage / "jobs").iterdir())


def test_oversized_uploads_are_413_while_streaming(tmp_path: Path) -> None:
    service = Service(tmp_path, workers=0, max_upload_mb=0.01)  # 10 KiB
    with TestClient(service.app) as client:
        big = service.model + b"\x00" * 20000
        declared = service.submit(client, model=big)
        assert declared.status_code == 413 and "limit" in declared.json()["detail"]

        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"; filename=\"../../evil.onnx\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
            stream = io.BytesIO(body)
            while chunk := stream.read(4096):
                yield chunk

        streamed = client.post("/v1/jobs", content=chunks(), headers={
            **service.auth(), "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert streamed.status_code == 413, streamed.text
        assert service.leftovers() == [] and not (tmp_path / "evil.onnx").exists()


def test_revoked_key_is_refused(api: tuple[Service, TestClient]) -> None:
    service, client = api
    assert client.get("/v1/jobs", headers=service.auth()).status_code == 200
    revoke_key(make_engine(service.db_url), service.vision_key[:12])
    resp = client.get("/v1/jobs", headers=service.auth())
    assert resp.status_code == 401 and "revoked" in resp.json()["detail"]
    assert client.get("/v1/records", headers=service.auth()).status_code == 401


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_inputs_part_is_checked_against_the_model(api: tuple[Service, TestClient]) -> None:
    service, client = api
    wrong = service.submit(client, inputs=_npz(y=np.zeros((16, 64), np.float32)))
    assert wrong.status_code == 422 and "`inputs`: the model's inputs are x; missing x" in wrong.json()["detail"]
    shape = service.submit(client, inputs=_npz(x=np.zeros((2, 64), np.float32)))
    assert shape.status_code == 422 and "the model takes float32 (16, 64)" in shape.json()["detail"]
    junk = service.submit(client, inputs=b"not an npz")
    assert junk.status_code == 422 and "not a numpy .npz file" in junk.json()["detail"]
    ok = service.submit(client, inputs=_npz(x=np.zeros((16, 64), np.float32)))
    assert ok.status_code == 202
    assert (service.storage / "jobs" / ok.json()["id"] / "inputs.npz").is_file()
    assert service.leftovers() == []


def test_a_real_job_succeeds_with_report_artifact_and_events(tuned: tuple[Service, TestClient, dict]) -> None:
    service, client, job = tuned
    assert job["status"] == "succeeded", job["error"]
    report = job["report"]
    assert report["verified"] and report["trials"] > 0 and report["team"] == "vision"
    assert report["verify"]["inputs"] == "file inputs.npz"  # the submission's `inputs` part
    assert report["artifact"]["path"] == f"/v1/jobs/{job['id']}/artifact"
    assert str(service.storage) not in json.dumps(report)  # no server paths for clients
    assert job["progress"]["trials_done"] == report["trials"] and job["progress"]["tasks"] == report["tasks"]
    art = client.get(f"/v1/jobs/{job['id']}/artifact", headers=service.auth())
    digest = hashlib.sha256(art.content).hexdigest()
    assert art.status_code == 200 and digest == art.headers["X-Artifact-SHA256"] == report["artifact"]["sha256"]
    assert client.get(f"/v1/jobs/{job['id']}/report", headers=service.auth()).json() == report
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=service.auth()).text
    end = [line for line in events.splitlines() if line.startswith("data:")][-1]
    assert "event: end" in events and json.loads(end[5:])["report"]["artifact"]["sha256"] == digest
    assert "tuner_trials_total" in client.get("/metrics").text


def test_other_teams_see_no_job_but_share_records(tuned: tuple[Service, TestClient, dict]) -> None:
    service, client, job = tuned
    for suffix in ("", "/events", "/report", "/artifact"):
        resp = client.get(f"/v1/jobs/{job['id']}{suffix}", headers=service.auth("speech"))
        assert resp.status_code == 404, suffix
    assert client.get("/v1/jobs", headers=service.auth("speech")).json()["total"] == 0
    records = client.get("/v1/records", headers=service.auth("speech")).json()
    assert records["total"] >= 1 and {r["team"] for r in records["records"]} == {"vision"}
    first = records["records"][0]
    one = client.get(f"/v1/records?workload={first['workload']}&hardware={first['hardware_key']}",
                     headers=service.auth("speech")).json()
    assert one["total"] >= 1 and all(r["workload"] == first["workload"] for r in one["records"])
    assert client.get("/v1/records?workload=12abc", headers=service.auth("speech")).status_code == 422
    assert client.get("/v1/records?hardware=nope", headers=service.auth("speech")).json()["total"] == 0


def test_keys_cli_prints_the_key_once_and_revokes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tuner.cli import app

    db = f"sqlite:///{tmp_path / 'keys.sqlite'}"
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--team", "vision", "--db", db])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("tnr_") and created.stdout.count(key) == 1
    listed = runner.invoke(app, ["keys", "list", "--db", db, "--json"])
    rows = json.loads(listed.stdout)
    assert [r["team"] for r in rows] == ["vision"] and key not in listed.stdout and key.startswith(rows[0]["prefix"])
    assert runner.invoke(app, ["keys", "revoke", rows[0]["prefix"], "--db", db]).exit_code == 0
    assert json.loads(runner.invoke(app, ["keys", "list", "--db", db, "--json"]).stdout)[0]["revoked_at"]
    assert runner.invoke(app, ["keys", "create", "--team", "a/b", "--db", db]).exit_code != 0


def test_serve_refuses_several_workers_on_sqlite(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tuner.cli import app

    result = CliRunner().invoke(app, ["serve", "--workers", "2", "--db", f"sqlite:///{tmp_path / 's.sqlite'}"])
    assert result.exit_code != 0 and "needs PostgreSQL" in str(result.exception)


def test_readyz_is_503_when_the_ray_cluster_is_unreachable(tmp_path: Path) -> None:
    app = create_app(ServiceConfig(db_url=f"sqlite:///{tmp_path / 'r.sqlite'}", storage_dir=tmp_path / "s",
                                   settings=_settings(), ray_address="127.0.0.1:1", workers=0))
    with TestClient(app) as client:
        resp = client.get("/readyz")
    assert resp.status_code == 503 and resp.json()["checks"]["database"] == "ok"
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in resp.json()["checks"]["ray"]


def test_refine_tunes_what_the_database_already_serves(tuned: tuple[Service, TestClient, dict]) -> None:
    service, client, first = tuned
    again = service.submit(client, team="speech").json()
    refined = service.submit(client, team="speech", refine="true").json()
    assert refined["refine"] is True and again["refine"] is False and refined["id"] != again["id"]
    plain = _wait(client, again["id"], service.auth("speech"), ("succeeded", "failed"))
    assert plain["status"] == "succeeded" and plain["report"]["trials"] == 0
    done = _wait(client, refined["id"], service.auth("speech"), ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]
    report = done["report"]
    assert report["trials"] >= 1 and report["tasks_refined"] == report["tasks"] == first["report"]["tasks"]
