"""Tuning on a Ray cluster: several nodes on this machine, told apart by hardware-key resources.

One cluster for the module: a head with the real hardware key of TARGET, a second node with the
same key, two nodes of other CPU kinds and one fake GPU kind (only to check placement).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tests import onnx_models
from tests.conftest import signal_first_descendant, sqlite_records
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


def _measured(report: dict) -> int:
    """Records a job made: its trials and the default schedules measured before them."""
    return report["trials"] + report["tasks_default_measured"]


def _runner_calls(report: dict) -> int:
    """Measurements a job made: its records' and the final timing's (which stores no record)."""
    return _measured(report) + report["final_timing"]["measurements"]


def test_runners_only_on_matching_nodes_and_every_record_reaches_the_database(cluster, tmp_path, ray_settings) -> None:  # noqa: ANN001
    report, db = _job(cluster, tmp_path, ray_settings)
    info = report["cluster"]
    assert info["backend"] == "ray" and info["runners"] == 2 and info["builders"] == 2
    per_node = info["trials_per_node"]
    assert set(per_node) == {cluster.node_ids["head"], cluster.node_ids["twin"]}  # both matching nodes measured
    # Each node's count holds its measurements: the trials and the default schedules measured
    # before the search; every one of them is a record.
    assert report["trials"] > 0 and report["tasks_default_measured"] == report["tasks_tuned"]
    assert sum(per_node.values()) == _runner_calls(report)
    assert len(open_database(db, TARGET)) == _measured(report)
    assert report["verified"]


def test_no_matching_node_names_the_wanted_and_existing_keys(cluster) -> None:  # noqa: ANN001
    with pytest.raises(rb.ClusterError) as info:
        rb.RayRunner("cpu-missing", 5, (3,), rb.ArtifactStore())
    text = str(info.value)
    assert "cpu-missing" in text and "cpu-kinda" in text and KEY in text


def test_gpu_runners_take_a_gpu_on_the_matching_node(cluster) -> None:  # noqa: ANN001
    runner = rb.RayRunner("gpu-fake-sm90", 5, (3,), rb.ArtifactStore())
    try:
        assert runner.nodes == [cluster.node_ids["gpu"]]
        assert ray.available_resources().get("GPU", 0) == 0  # the runner holds the only GPU
    finally:
        runner.close()


def test_a_two_gpu_node_gets_a_runner_per_gpu(cluster) -> None:  # noqa: ANN001
    """A node that advertises 2 units of a GPU key (`tuner cluster resources` on a 2-GPU machine)
    gets two runners, each holding one of its GPUs: one job measures on both at once."""
    node = cluster.add_node(num_cpus=1, num_gpus=2, resources={rb.hardware_resource("gpu-fake2-sm90"): 2})
    cluster.wait_for_nodes()
    try:
        pool = rb.start_runners("gpu-fake2-sm90", start_timeout_s=120)
        try:
            assert pool.nodes == [node.node_id, node.node_id]
            slots = ray.get([a.where.remote() for a in pool.actors])
            assert sorted(slots) == [f"{node.node_id}/gpu0", f"{node.node_id}/gpu1"]
        finally:
            pool.close()
    finally:
        cluster.remove_node(node)


def _kill_first(name: str, stop: threading.Event, killed: list) -> None:
    """SIGKILL the first of this test's Ray actors (the test cluster's workers) busy in `name`."""
    signal_first_descendant(f"ray::{name}", signal.SIGKILL, stop, killed)


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
    assert len(open_database(db, TARGET)) == _measured(report)


def _kill_a_searcher_once_records_land(db_file: Path, stop: threading.Event, killed: list) -> None:
    while not stop.is_set() and not sqlite_records(db_file):
        time.sleep(0.1)
    _kill_first("SearchActor.call", stop, killed)


def test_searchers_share_the_tasks_and_survive_a_killed_searcher(cluster, tmp_path, ray_settings) -> None:  # noqa: ANN001
    """Two searcher actors each search half the tasks into the one database; one is SIGKILLed
    mid-search, Ray restarts it and its share goes on with the rest of its budget."""
    stop, killed = threading.Event(), []
    db_file = tmp_path / "db.sqlite"
    killer = threading.Thread(target=_kill_a_searcher_once_records_land, args=(db_file, stop, killed), daemon=True)
    killer.start()
    model = onnx_models.save(onnx_models.small_convnet(), tmp_path / "conv.onnx")
    db = f"sqlite:///{db_file}"
    request = RunRequest(model=str(model), target=TARGET, trials=16, out_dir=tmp_path / "out", db_url=db,
                         ray_address=cluster.address, measure_untuned=False, searchers=2)
    try:
        report = run(request, ray_settings)
    finally:
        stop.set()
        killer.join()
    assert killed and killed[0].startswith("ray::SearchActor.call"), killed
    info = report["cluster"]
    assert info["searchers"] == 2  # (a restarted searcher may come back on another node)
    assert all(t > 0 for t in info["trials_per_searcher"]) and sum(info["trials_per_searcher"]) == report["trials"]
    assert report["tasks_tuned"] == report["tasks"] and report["verified"]
    # Every trial a searcher reported is a record; a killed searcher may have committed a last
    # batch it had no time to report, and its share measures its tasks' defaults again.
    records = len(open_database(db, TARGET))
    slack = ray_settings.search.max_trials_per_iter + report["tasks"]
    assert _measured(report) <= records <= _measured(report) + slack
    assert set(info["trials_per_node"]) <= {cluster.node_ids["head"], cluster.node_ids["twin"]}


def test_a_searchers_node_that_leaves_mid_job(cluster, tmp_path, ray_settings, monkeypatch) -> None:  # noqa: ANN001
    """Both searchers start on a node that then leaves: each share goes on in a new searcher on
    another node from the records already committed, and the job completes."""
    from tuner.cluster import searchers as rs

    node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    place = rs.placement
    first = iter([True])
    monkeypatch.setattr(rs, "placement", lambda count, *a: [node.node_id] * count if next(first, False) else place(count, *a))
    db_file = tmp_path / "db.sqlite"
    removed: list = []

    def remove_once_records_land() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if sqlite_records(db_file):
                cluster.remove_node(node)
                removed.append(time.monotonic())
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=remove_once_records_land, daemon=True)
    watcher.start()
    model = onnx_models.save(onnx_models.small_convnet(), tmp_path / "conv.onnx")
    report = run(RunRequest(model=str(model), target=TARGET, trials=16, out_dir=tmp_path / "out",
                            db_url=f"sqlite:///{db_file}", ray_address=cluster.address, measure_untuned=False,
                            searchers=2), ray_settings)
    finished = time.monotonic()
    watcher.join()
    assert removed and removed[0] < finished, "the node must leave while the job runs"
    info = report["cluster"]
    assert node.node_id not in info["searcher_nodes"]  # both shares finished elsewhere
    assert report["verified"] and report["tasks_tuned"] == report["tasks"]
    assert len(open_database(f"sqlite:///{db_file}", TARGET)) >= report["trials"] > 0


def test_one_job_two_targets_each_measured_only_on_its_hardware(cluster, tmp_path, ray_settings) -> None:  # noqa: ANN001
    """A second CPU target (1 core: another hardware key) gets its own node; both targets are
    searched at the same time and each one's records carry its own hardware."""
    one_core = {"kind": "llvm", "num-cores": 1}
    key1 = fingerprint_for(one_core).key
    node = cluster.add_node(num_cpus=1, resources={rb.hardware_resource(key1): 1})
    cluster.wait_for_nodes()
    try:
        model = onnx_models.save(onnx_models.small_convnet(), tmp_path / "conv.onnx")
        db = f"sqlite:///{tmp_path / 'db.sqlite'}"
        report = run(RunRequest(model=str(model), target=TARGET, more_targets=[one_core], trials=8,
                                out_dir=tmp_path / "out", db_url=db, ray_address=cluster.address,
                                measure_untuned=False), ray_settings)
    finally:
        cluster.remove_node(node)
    first, second = report["targets"]
    assert report["verified"] and first["verified"] and second["verified"]
    assert set(first["cluster"]["trials_per_node"]) <= {cluster.node_ids["head"], cluster.node_ids["twin"]}
    assert set(second["cluster"]["trials_per_node"]) == {node.node_id}
    for one, target in ((first, TARGET), (second, one_core)):
        assert one["trials"] > 0 and one["cluster"]["searchers"] == 1
        assert len(open_database(db, target)) == _measured(one)  # records under that target's hardware only
    assert report["trials"] == first["trials"] + second["trials"]
    # The two targets' searchers (one each) were placed on two nodes, neither of which measures
    # for a CPU target of the job (a search there would disturb the measurements).
    searcher_nodes = first["cluster"]["searcher_nodes"] + second["cluster"]["searcher_nodes"]
    assert len(set(searcher_nodes)) == 2
    assert not set(searcher_nodes) & {cluster.node_ids["head"], cluster.node_ids["twin"], node.node_id}


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
    assert len(open_database(db, TARGET)) == _measured(report)
    assert sum(report["cluster"]["trials_per_node"].values()) <= _runner_calls(report)


def test_a_job_whose_hardware_is_all_gone_ends_with_a_clear_error(cluster) -> None:  # noqa: ANN001
    runner = rb.RayRunner("cpu-kindb", 5, (3,), rb.ArtifactStore())
    node = next(n for n in cluster.worker_nodes if n.node_id == cluster.node_ids["kind_b"])
    cluster.remove_node(node)
    with pytest.raises(RuntimeError, match="no node with hardware cpu-kindb is left"):
        runner.run([])  # through MetaSchedule's FFI: a RuntimeError, the ClusterError is kept
    assert isinstance(runner.failure, rb.ClusterError)


def test_a_node_that_cannot_import_tvm_is_named(cluster, tmp_path) -> None:  # noqa: ANN001
    """A worker whose Python has a broken TVM: the error says which node and why, in one line."""
    broken = tmp_path / "broken" / "tvm"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('libtvm.so: cannot open shared object file')\n")
    node = cluster.node_ids["kind_a"]
    actor = rb.RunnerActor.options(
        runtime_env={"env_vars": {"PYTHONPATH": str(broken.parent)}},
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
    ).remote()
    with pytest.raises(rb.ClusterError) as info:
        rb.await_started([actor], "runner actors for cpu-kinda", 120)
    text = str(info.value)
    address = next(n.address for n in rb.nodes() if n.node_id == node)
    assert "\n" not in text and f"runner actors for cpu-kinda cannot start on node {address}: " in text
    assert "ImportError: libtvm.so: cannot open shared object file (can that node import TVM?)" in text
