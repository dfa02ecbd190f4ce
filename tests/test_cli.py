"""The CLI as users run it: a zoo model twice, --json output, Ctrl-C keeps measured records."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests import onnx_models
from tests.conftest import sqlite_records, tiny_env
from tests.test_bad_input import tuner_cli


def test_models_lists_the_zoo(tmp_path: Path) -> None:
    proc = tuner_cli(["models", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert {"squeezenet", "resnet50", "vgg19"} <= rows.keys()
    assert rows["resnet50"]["inputs"] == {"gpu_0/data_0": [1, 3, 224, 224]}
    assert 7 < rows["resnet50"]["gflops"] < 9


def test_zoo_model_tuned_then_served_from_database(tmp_path: Path) -> None:
    args = ["run", "zoo:squeezenet", "--trials", "40", "--json", "--target", '{"kind": "llvm", "num-cores": 2}']
    first = tuner_cli([*args, "--out", str(tmp_path / "a")], tmp_path, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads(first.stdout)  # stdout holds the JSON and nothing else
    assert report["model"] == "squeezenet" and report["verified"]
    # 26 kernels, the 4 distinct 3x3 convolutions each as 3 (Winograd): 34 tasks (the 1x1
    # convolutions' padded rows are inside their kernels, row_padding.py).
    assert report["tasks"] == 34 and report["trials"] >= 34
    assert report["tasks_tuned"] + report["tasks_from_db"] == report["tasks"]
    assert report["loops"]["parallel"] > 0 and report["loops"]["vectorized"] > 0
    # Latencies are reported, never compared: on a loaded machine a parallel kernel can lose to a
    # serial one (CI once saw 570 vs 235 ms). Speed is the benchmarks' business.
    assert report["latency_ms"]["tuned"] > 0 and report["latency_ms"]["untuned"] > 0
    assert Path(report["artifact"]["path"]).stat().st_size == report["artifact"]["bytes"]

    second = tuner_cli([*args, "--out", str(tmp_path / "b")], tmp_path, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)
    assert again["trials"] == 0
    assert again["tasks_from_db"] == report["tasks"]
    assert again["tasks_default_schedule"] == 0


def test_ctrl_c_keeps_measured_records(tmp_path: Path) -> None:
    onnx_models.save(onnx_models.small_convnet(channels=16, size=32), tmp_path / "conv.onnx")
    db = tmp_path / "int.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner.cli", "run", "conv.onnx", "--trials", "2000", "--db", f"sqlite:///{db}",
         "--target", '{"kind": "llvm", "num-cores": 2}'],
        cwd=tmp_path, env=tiny_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )

    deadline = time.monotonic() + 300
    while sqlite_records(db) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    seen = sqlite_records(db)
    assert seen >= 3, "no records were committed while tuning"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert sqlite_records(db) >= seen
