"""`tuner run --ray-address local` starts Ray for the run and leaves nothing behind; bad addresses."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil

from tests import onnx_models
from tests.test_bad_input import assert_clean_error, tuner_cli

RAY_DAEMONS = ("raylet", "gcs_server", "ray::", "default_worker", "dashboard")


def _ray_processes_since(t0: float) -> list[str]:
    found = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["create_time"] >= t0 and any(d in cmd for d in RAY_DAEMONS):
            found.append(cmd[:120])
    return found


def test_local_ray_run_then_nothing_left(tmp_path: Path) -> None:
    model = onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")
    t0 = time.time() - 1
    proc = tuner_cli(["run", str(model), "--trials", "8", "--ray-address", "local", "--workers", "1",
                      "--searchers", "2", "--target", '{"kind": "llvm", "num-cores": 2}', "--json"],
                     tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["cluster"]["backend"] == "ray" and report["cluster"]["builders"] == 1
    assert report["tasks"] == 1 and report["cluster"]["searchers"] == 1  # never more searchers than tasks
    assert sum(report["cluster"]["trials_per_node"].values()) == report["trials"] > 0
    deadline = time.time() + 30
    while _ray_processes_since(t0) and time.time() < deadline:
        time.sleep(0.5)
    assert _ray_processes_since(t0) == []


def test_unreachable_ray_address_is_one_line(tmp_path: Path) -> None:
    model = onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")
    proc = tuner_cli(["run", str(model), "--trials", "4", "--ray-address", "127.0.0.1:1"], tmp_path, timeout=120)
    assert_clean_error(proc, "cannot reach the Ray cluster at 127.0.0.1:1")
    status = tuner_cli(["cluster", "status", "--ray-address", "127.0.0.1:1"], tmp_path, timeout=120)
    assert_clean_error(status, "cannot reach the Ray cluster")


def test_searchers_without_ray_is_one_line(tmp_path: Path) -> None:
    model = onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")
    proc = tuner_cli(["run", str(model), "--trials", "4", "--searchers", "2"], tmp_path, timeout=300)
    assert_clean_error(proc, "2 searchers need Ray: add --ray-address local")
