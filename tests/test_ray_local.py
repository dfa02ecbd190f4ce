"""`tuner run --ray-address local` starts Ray for the run and leaves nothing behind; bad addresses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from tests import onnx_models
from tests.conftest import signal_first_descendant, sqlite_records, tiny_env
from tests.test_bad_input import assert_clean_error, tuner_cli

RAY_DAEMONS = ("raylet", "gcs_server", "ray::", "default_worker", "dashboard")


MARK = "TEST_RAY_RUN_MARK"  # set in the env of the run under test; Ray's processes inherit it


def _ray_processes_since(t0: float, run: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["create_time"] >= t0 and any(d in cmd for d in RAY_DAEMONS) and _of_run(p, run):
            found.append(cmd[:120])
    return found


def _of_run(p: psutil.Process, run: str) -> bool:
    """Another tuner run on this machine (a benchmark beside the suite) starts Ray processes of
    its own, which must not fail this run's check. Ours carry the marker in their environment;
    Ray's agents retitle themselves over theirs, so an unreadable one is ours when its parent is,
    and counts when orphaned (left behind by someone: most likely us)."""
    try:
        env = p.environ()
        if env:
            return env.get(MARK) == run
        parent = p.ppid()
        return parent <= 1 or _of_run(psutil.Process(parent), run)
    except psutil.Error:
        return False


def _abort_the_search_once(stop: threading.Event, aborted: list) -> None:
    """SIGABRT (what a C++ abort raises) the run's searcher actor once it is searching."""
    signal_first_descendant("ray::SearchActor.call", signal.SIGABRT, stop, aborted)


def test_local_ray_run_survives_an_aborted_search_then_nothing_left(tmp_path: Path) -> None:
    """The default: no --ray-address, a local Ray started for the run and stopped after. The
    search runs in a searcher actor, not in the run's own process: an abort inside it (TVM's
    search once aborted a whole run from C++) restarts the actor, and the run goes on."""
    model = onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "m.onnx")
    t0 = time.time() - 1
    env = tiny_env(tmp_path) | {MARK: str(tmp_path)}
    del env["TUNER_WORKERS__BACKEND"]  # the configured default, as users get it
    stop, aborted = threading.Event(), []
    killer = threading.Thread(target=_abort_the_search_once, args=(stop, aborted), daemon=True)
    killer.start()
    try:
        proc = tuner_cli(["run", str(model), "--trials", "8", "--workers", "1", "--searchers", "2",
                          "--target", '{"kind": "llvm", "num-cores": 2}', "--json"], tmp_path, timeout=600, env=env)
    finally:
        stop.set()
        killer.join()
    assert aborted, "the searcher was never seen searching"
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["verified"] and report["trials"] > 0
    assert report["cluster"]["backend"] == "ray" and report["cluster"]["builders"] == 1
    # Never more searchers than tasks: the one task is searched by one searcher.
    assert report["tasks"] == 1 and report["cluster"]["searchers"] == 1
    # The runners measured the defaults and trials of both attempts of the search.
    measured = report["trials"] + report["tasks_default_measured"]
    assert sum(report["cluster"]["trials_per_node"].values()) >= measured
    deadline = time.time() + 30
    while _ray_processes_since(t0, str(tmp_path)) and time.time() < deadline:
        time.sleep(0.5)
    assert _ray_processes_since(t0, str(tmp_path)) == []


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


def test_ctrl_c_on_the_default_local_ray_keeps_records_and_leaves_nothing(tmp_path: Path) -> None:
    """Ctrl-C in a terminal reaches the whole process group: tuner, its local Ray and searchers."""
    onnx_models.save(onnx_models.small_convnet(channels=16, size=32), tmp_path / "conv.onnx")
    db = tmp_path / "int.sqlite"
    env = tiny_env(tmp_path) | {MARK: str(tmp_path)}
    del env["TUNER_WORKERS__BACKEND"]
    t0 = time.time() - 1
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner.cli", "run", "conv.onnx", "--trials", "2000", "--db", f"sqlite:///{db}",
         "--searchers", "2", "--target", '{"kind": "llvm", "num-cores": 2}'],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )

    deadline = time.monotonic() + 300
    while sqlite_records(db) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    seen = sqlite_records(db)
    assert seen >= 3, "no records were committed while tuning"
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert sqlite_records(db) >= seen
    deadline = time.time() + 30
    while _ray_processes_since(t0, str(tmp_path)) and time.time() < deadline:
        time.sleep(0.5)
    assert _ray_processes_since(t0, str(tmp_path)) == []
