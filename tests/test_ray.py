"""Tuning on a Ray cluster: several nodes on this machine, told apart by hardware-key resources.

One cluster for the module: a head with the real hardware key of TARGET, a second node with the
same key, two nodes of other CPU kinds and one fake GPU kind (only to check placement).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from tests import onnx_models
from tuner.cluster import ray_backend as rb
from tuner.config import Settings, WorkerSettings
from tuner.hardware import fingerprint_for
from tuner.pipeline import RunRequest, open_database, run

TARGET = {"kind": "llvm", "num-cores": 2}
KEY = fingerprint_for(TARGET).key


@pytest.fixture(scope="module")
def cluster():  # noqa: ANN201
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {rb.hardware_resource(KEY): 1}, "include_dashboard": False,
    })
    nodes = {
        "twin": c.add_node(num_cpus=1, resources={rb.hardware_resource(KEY): 1}),
        "kind_a": c.add_node(num_cpus=1, resources={rb.hardware_resource("cpu-kinda"): 1}),
        "kind_b": c.add_node(num_cpus=1, resources={rb.hardware_resource("cpu-kindb"): 1}),
        "gpu": c.add_node(num_cpus=1, num_gpus=1, resources={rb.hardware_resource("gpu-fake-sm90"): 1}),
    }
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    c.node_ids = {name: n.node_id for name, n in nodes.items()}
    c.node_ids["head"] = c.head_node.node_id
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def ray_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"workers": WorkerSettings(builders=2, run_timeout_s=20, build_timeout_s=60)})


def _job(cluster, tmp_path: Path, settings: Settings, trials: int = 16) -> tuple[dict, str]:  # noqa: ANN001
    model = onnx_models.save(onnx_models.small_convnet(), tmp_path / "conv.onnx")
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    request = RunRequest(model=str(model), target=TARGET, trials=trials, out_dir=tmp_path / "out",
                         db_url=db, ray_address=cluster.address, measure_untuned=False)
    return run(request, settings), db


def test_runners_only_on_matching_nodes_and_every_record_reaches_the_database(cluster, tmp_path, ray_settings) -> None:  # noqa: ANN001
    report, db = _job(cluster, tmp_path, ray_settings)
    info = report["cluster"]
    assert info["backend"] == "ray" and info["runners"] == 2 and info["builders"] == 2
    per_node = info["trials_per_node"]
    assert set(per_node) == {cluster.node_ids["head"], cluster.node_ids["twin"]}  # both matching nodes measured
    assert sum(per_node.values()) == report["trials"] > 0
    assert len(open_database(db, TARGET)) == report["trials"]  # every measured trial is a record
    assert report["verified"]


def test_no_matching_node_names_the_wanted_and_existing_keys(cluster) -> None:  # noqa: ANN001
    with pytest.raises(rb.ClusterError) as info:
        rb.RayRunner("cpu-missing", 5, (1, 1, 1, False), rb.ArtifactStore())
    text = str(info.value)
    assert "cpu-missing" in text and "cpu-kinda" in text and KEY in text


def test_gpu_runners_take_a_gpu_on_the_matching_node(cluster) -> None:  # noqa: ANN001
    runner = rb.RayRunner("gpu-fake-sm90", 5, (1, 1, 1, False), rb.ArtifactStore())
    try:
        assert runner.nodes == [cluster.node_ids["gpu"]]
        assert ray.available_resources().get("GPU", 0) == 0  # the runner holds the only GPU
    finally:
        runner.close()


def _kill_first(name: str, stop: threading.Event, killed: list) -> None:
    """SIGKILL the first process whose title names `name` (a Ray actor mid-job)."""
    while not stop.is_set() and not killed:
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if cmd.startswith(f"ray::{name}.") and proc.pid != os.getpid():
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(cmd)
                return
        time.sleep(0.05)


@pytest.mark.parametrize("actor", ["RunnerActor", "BuilderActor"])
def test_an_actor_killed_mid_job_loses_no_record(cluster, tmp_path, ray_settings, actor: str) -> None:  # noqa: ANN001
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first, args=(actor, stop, killed), daemon=True)
    killer.start()
    try:
        report, db = _job(cluster, tmp_path, ray_settings)
    finally:
        stop.set()
        killer.join()
    assert killed, f"no {actor} call was seen to kill"
    assert report["trials"] > 0 and report["verified"]
    assert len(open_database(db, TARGET)) == report["trials"]


def _remove_when_runners_are_up(cluster, node, runners: int, done: list) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        up = sum(1 for p in psutil.process_iter(["cmdline"])
                 if " ".join(p.info["cmdline"] or []).startswith("ray::RunnerActor"))
        if up >= runners:
            time.sleep(3)  # into the first batches
            cluster.remove_node(node)
            done.append(time.monotonic())
            return
        time.sleep(0.2)


def test_a_node_that_leaves_mid_job(cluster, tmp_path, ray_settings) -> None:  # noqa: ANN001
    extra = cluster.add_node(num_cpus=1, resources={rb.hardware_resource(KEY): 1})
    cluster.wait_for_nodes()
    removed: list = []
    watcher = threading.Thread(target=_remove_when_runners_are_up, args=(cluster, extra, 3, removed), daemon=True)
    watcher.start()
    report, db = _job(cluster, tmp_path, ray_settings, trials=32)
    finished = time.monotonic()
    watcher.join()
    assert removed and removed[0] < finished, "the node must leave while the job runs"
    assert report["cluster"]["runners"] == 3
    assert extra.node_id not in rb.alive_node_ids()
    assert report["trials"] > 0 and report["verified"]
    assert len(open_database(db, TARGET)) == report["trials"]
    assert sum(report["cluster"]["trials_per_node"].values()) <= report["trials"]


def test_a_job_whose_hardware_is_all_gone_ends_with_a_clear_error(cluster) -> None:  # noqa: ANN001
    runner = rb.RayRunner("cpu-kindb", 5, (1, 1, 1, False), rb.ArtifactStore())
    node = next(n for n in cluster.worker_nodes if n.node_id == cluster.node_ids["kind_b"])
    cluster.remove_node(node)
    with pytest.raises(RuntimeError, match="no node with hardware cpu-kindb is left"):
        runner.run([])  # through MetaSchedule's FFI: a RuntimeError, the ClusterError is kept
    assert isinstance(runner.failure, rb.ClusterError)
