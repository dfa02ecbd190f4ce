"""MetaSchedule Builder and Runner over Ray actors: the same interfaces as cluster/local.py.

Builders are long-lived actors (one CPU each, TVM imported once) on any node. Runners are
actors that need the custom resource a node advertises for its hardware key, so a schedule is
only ever measured on the hardware it is tuned for. Built libraries travel as Ray objects from
the builder's node to the runner's node; the driver only sees errors.

Policy, explicit (``overlap``): by default ``RayRunner.run`` returns after the whole batch is
measured (spread over every matching node), so MetaSchedule cannot build the next batch while a
measurement runs and builds never share a measuring node's cores. With ``overlap=True`` builds
go on during measurements: use it when builder nodes are not runner nodes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import ray
import tvm
from ray.exceptions import GetTimeoutError, RayActorError, RayError
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerFuture, RunnerInput, RunnerResult

from .kernel_check import check_kernel
from .local import BuildProcess, stopwatch
from .pool import Outcome
from .worker_tasks import dumps_target, measure_candidate, warm_up

RESOURCE_PREFIX = "tuner_hw_"


class ClusterError(RuntimeError):
    """The cluster cannot do what the job needs (unreachable, no matching node, lost node)."""


def hardware_resource(key: str) -> str:
    """The Ray custom resource a node advertises for a hardware key."""
    return f"{RESOURCE_PREFIX}{key}"


@dataclass
class NodeInfo:
    node_id: str
    address: str
    alive: bool
    cpus: float
    gpus: float
    hardware_keys: list[str] = field(default_factory=list)
    # Units of each hardware key: 1 for a CPU node, the number of such GPUs for a GPU node.
    hardware_units: dict[str, float] = field(default_factory=dict)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """ray.init retries an unreachable GCS for minutes; a plain TCP connect answers in seconds."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and the like: Ray resolves them itself, and fails fast
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def connect(address: str | None, local_resources: dict[str, float]) -> bool:
    """Join ``address`` or start a local Ray (dashboard off); True when this call connected.

    False when the process is already connected (a caller's cluster): then it is not ours to close.
    """
    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                  configure_logging=False)
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(f"cannot reach the Ray cluster at {address}: {first}") from None
        return True
    # address="local": always a new Ray of our own; with None, ray.init joins a cluster that
    # `ray start` (or a test's cluster_utils) left running here, and refuses our resources.
    # Ray 2.60 turns token authentication on for a new local cluster (good) and warns about it
    # on stderr at every start (noise in every `tuner run`).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(address="local", resources=local_resources, **common)  # every CPU of this machine
    return True


def disconnect() -> None:
    """Leave the cluster; a local Ray that ``connect`` started stops with it, a remote one stays."""
    if ray.is_initialized():
        ray.shutdown()


def nodes() -> list[NodeInfo]:
    found = []
    for n in ray.nodes():
        res = n.get("Resources", {})
        found.append(NodeInfo(
            node_id=n["NodeID"], address=n.get("NodeManagerAddress", "?"), alive=bool(n.get("Alive")),
            cpus=float(res.get("CPU", 0)), gpus=float(res.get("GPU", 0)),
            hardware_keys=sorted(k[len(RESOURCE_PREFIX):] for k in res if k.startswith(RESOURCE_PREFIX)),
            hardware_units={k[len(RESOURCE_PREFIX):]: float(v) for k, v in res.items() if k.startswith(RESOURCE_PREFIX)},
        ))
    return found


def matching_nodes(key: str) -> list[NodeInfo]:
    return [n for n in nodes() if n.alive and key in n.hardware_keys]


@contextmanager
def remember_failure(owner: Any) -> Iterator[None]:
    """Keep a ClusterError on ``owner.failure``: crossing MetaSchedule's C++ turns it into a
    plain RuntimeError, and the job must still end with this message, not a traceback."""
    try:
        yield
    except ClusterError as exc:
        owner.failure = exc
        raise


class NodeLost(RuntimeError):
    """The node running an actor call left the cluster."""


def alive_node_ids() -> set[str]:
    return {n.node_id for n in nodes() if n.alive}


def await_result(ref: ray.ObjectRef, node_id: str, timeout_s: float, poll_s: float = 2.0) -> Any:
    """ray.get that gives up early when the actor's node is gone (its restart may never come)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ready, _ = ray.wait([ref], timeout=min(poll_s, max(0.0, deadline - time.monotonic())))
        if ready:
            return ray.get(ref)
        if node_id not in alive_node_ids():
            raise NodeLost(f"node {node_id[:12]} left the cluster")
        if time.monotonic() >= deadline:
            raise GetTimeoutError(f"no result within {timeout_s:.0f} s")


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500]


@ray.remote(num_cpus=1, max_restarts=2, max_task_retries=1)
class BuilderActor:
    """Imports TVM once, then compiles candidates for as long as the job runs, each in a
    process that is killed when it runs past the build timeout (`BuildProcess`)."""

    def __init__(self) -> None:
        warm_up()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.builds = BuildProcess()
        self.builds.pool.start()

    def ready(self) -> str:
        return self.node_id

    @ray.method(num_returns=2)
    def build(self, mod_json: str, target: dict[str, Any], timeout_s: float) -> tuple[str | None, bytes | None]:
        return self.builds.build(mod_json, target, timeout_s)


@ray.remote(num_cpus=0, max_restarts=2, max_task_retries=1)
class RunnerActor:
    """Measures one candidate at a time (an actor runs its calls in order) on its node."""

    def __init__(self) -> None:
        warm_up()
        self.node_id = ray.get_runtime_context().get_node_id()
        # Which runner measured: the node, and on a GPU node the GPU Ray gave this actor (it is
        # device 0 of the actor's CUDA_VISIBLE_DEVICES).
        gpus = [str(g) for g in ray.get_gpu_ids()]
        self.slot = f"{self.node_id}/gpu{','.join(gpus)}" if gpus else self.node_id
        self.dir = tempfile.mkdtemp(prefix="tuner-ray-run-")
        self._ids = itertools.count()

    def ready(self) -> str:
        return self.node_id

    def where(self) -> str:
        return self.slot

    def measure(self, data: bytes, device_type: str, args_info: list[Any], config: tuple) -> tuple:
        # A fresh name each time: rewriting a loaded library in place crashes the process.
        path = os.path.join(self.dir, f"{next(self._ids)}.so")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            return self.slot, measure_candidate(path, device_type, args_info, *config), None
        except Exception as exc:  # noqa: BLE001 - a failed candidate, reported as such
            return self.slot, None, _error_text(exc)
        finally:
            os.unlink(path)

    def check(self, *job: Any) -> tuple:
        """A record check (cluster/kernel_check.py) on this runner's hardware."""
        try:
            return self.slot, check_kernel(*job), None
        except Exception as exc:  # noqa: BLE001 - a check that could not run, reported as such
            return self.slot, None, _error_text(exc)


class ArtifactStore:
    """Build outputs stay Ray objects; MetaSchedule sees a path whose folder it may delete."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="tuner-ray-artifacts-")
        self._refs: dict[str, ray.ObjectRef] = {}
        # Artifacts to be measured more than once (the final timing's rounds): runs left.
        self._runs: dict[str, int] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()

    def put(self, ref: ray.ObjectRef) -> str:
        folder = os.path.join(self.root, str(next(self._ids)))
        os.makedirs(folder)
        path = os.path.join(folder, "candidate.so")
        with self._lock:
            self._refs[path] = ref
        return path

    def pop(self, path: str) -> ray.ObjectRef:
        """The artifact for a measurement; dropped here after its last allowed run."""
        with self._lock:
            left = self._runs.pop(path, 1) - 1
            if left > 0:
                self._runs[path] = left
                return self._refs[path]
            return self._refs.pop(path)

    def allow_runs(self, paths: list[str], runs: int) -> None:
        """Let each of these artifacts be measured `runs` times instead of once (0: drop them
        now, e.g. those a failed round left over)."""
        with self._lock:
            for path in paths:
                if runs > 0:
                    self._runs[path] = runs
                else:
                    self._runs.pop(path, None)
                    self._refs.pop(path, None)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class ActorPool:
    """Started actors and their nodes. Handles pickle: the searchers of one job share the pools
    the driver started (a node's one hardware unit admits one runner), and only the owner kills."""

    actors: list
    nodes: list[str]
    owned: bool = False

    def shared(self) -> ActorPool:
        return ActorPool(self.actors, self.nodes, owned=False)

    def close(self) -> None:
        if self.owned:
            for actor in self.actors:
                ray.kill(actor)


def launch_builders(workers: int) -> ActorPool:
    """Builder actors that start (import TVM) in the background, so that the runners can start
    meanwhile; ``await_pool`` waits for them."""
    return ActorPool([BuilderActor.remote() for _ in range(max(1, workers))], [], owned=True)


def start_builders(workers: int, start_timeout_s: float = 120.0) -> ActorPool:
    return await_pool(launch_builders(workers), "builder actors", start_timeout_s)


def await_pool(pool: ActorPool, what: str, timeout_s: float) -> ActorPool:
    pool.nodes = await_started(pool.actors, what, timeout_s)
    return pool


def start_runners(hardware_key: str, start_timeout_s: float = 120.0) -> ActorPool:
    """One runner per unit of the key: a CPU node advertises 1 (its measurements must not
    overlap), a GPU node one per GPU of that kind (`tuner cluster resources`), and each GPU
    runner holds a GPU of its own, so a 2-GPU node measures two candidates at once."""
    matching = matching_nodes(hardware_key)
    if not matching:
        known = sorted({k for n in nodes() if n.alive for k in n.hardware_keys}) or ["none"]
        raise ClusterError(
            f"no node of the Ray cluster has hardware {hardware_key} (resource "
            f"{hardware_resource(hardware_key)}); nodes advertise: {', '.join(known)}"
        )
    options: dict[str, Any] = {"resources": {hardware_resource(hardware_key): 1}}
    if hardware_key.startswith("gpu"):
        options["num_gpus"] = 1
    units = sum(max(1, int(n.hardware_units.get(hardware_key, 1))) if hardware_key.startswith("gpu") else 1
                for n in matching)
    actors = [RunnerActor.options(**options).remote() for _ in range(units)]
    return ActorPool(actors, await_started(actors, f"runner actors for {hardware_key}", start_timeout_s), owned=True)


def await_started(actors: list, what: str, timeout_s: float) -> list[str]:
    """The node of each actor once its constructor (the TVM import) has run; a ClusterError
    naming the node that cannot import TVM, or saying that none started in time."""
    try:
        return ray.get([a.ready.remote() for a in actors], timeout=timeout_s)
    except GetTimeoutError:
        raise ClusterError(f"{what} did not start within {timeout_s:.0f} s (no free resources?)") from None
    except RayError as exc:
        # An actor that failed to start (most often: its node's Python cannot import TVM) is
        # named by Ray as "(pid=..., ip=...)"; say which machine to fix.
        where = re.search(r"\bip=([0-9A-Za-z.:-]+)", str(exc))
        node = f" on node {where.group(1)}" if where else ""
        raise ClusterError(f"{what} cannot start{node}: {_error_text(exc)} (can that node import TVM?)") from None


@derived_object
class RayBuilder(PyBuilder):
    def __init__(self, workers: int, timeout_s: float, store: ArtifactStore, start_timeout_s: float = 120.0,
                 pool: ActorPool | None = None) -> None:
        super().__init__()
        self.pool = pool or start_builders(workers, start_timeout_s)
        self.actors, self.nodes = self.pool.actors, self.pool.nodes
        self.timeout_s = timeout_s
        self.store = store
        self._turn = itertools.count()
        self.seconds = 0.0
        self.failure: ClusterError | None = None

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        with stopwatch(self), remember_failure(self):
            return self._build(build_inputs)

    def _build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        alive = alive_node_ids()
        usable = [i for i, node in enumerate(self.nodes) if node in alive]
        if not usable:
            raise ClusterError("every builder's node left the cluster")
        calls = []
        for inp in build_inputs:
            i = usable[next(self._turn) % len(usable)]
            calls.append((i, *self.actors[i].build.remote(tvm.ir.save_json(inp.mod), dumps_target(inp.target),
                                                          self.timeout_s)))
        per_actor = -(-len(calls) // len(usable))
        results = []
        for i, error_ref, data_ref in calls:
            try:
                error = await_result(error_ref, self.nodes[i], self.timeout_s * per_actor)
            except GetTimeoutError:
                error = f"build timed out after {self.timeout_s:.0f} s"
            except NodeLost as exc:
                error = f"builder lost: {exc}"
            except RayError as exc:
                error = f"builder lost: {_error_text(exc)}"
            results.append(BuilderResult(None, error) if error else BuilderResult(self.store.put(data_ref), None))
        return results

    def close(self) -> None:
        self.pool.close()


@derived_object
class RayRunnerFuture(PyRunnerFuture):
    def __init__(self, ref: ray.ObjectRef, node_id: str, timeout_s: float, counts: Counter) -> None:
        super().__init__()
        self.ref = ref
        self.node_id = node_id
        self.timeout_s = timeout_s
        self.counts = counts
        self._result: RunnerResult | None = None

    def done(self) -> bool:
        if self._result is not None:
            return True
        ready, _ = ray.wait([self.ref], timeout=0)
        return bool(ready)

    def result(self) -> RunnerResult:
        if self._result is None:
            try:
                node, run_secs, error = await_result(self.ref, self.node_id, self.timeout_s)
                self.counts[node] += 1
            except GetTimeoutError:
                run_secs, error = None, f"measurement timed out after {self.timeout_s:.0f} s"
            except NodeLost as exc:
                run_secs, error = None, f"runner lost: {exc}"
            except RayActorError as exc:
                run_secs, error = None, f"runner crashed: {_error_text(exc)}"
            except RayError as exc:
                run_secs, error = None, f"measurement failed: {_error_text(exc)}"
            self._result = RunnerResult(run_secs, error)
        return self._result


@derived_object
class RayRunner(PyRunner):
    """One runner actor per node that advertises the hardware key; candidates spread over them."""

    def __init__(self, hardware_key: str, timeout_s: float, config: tuple, store: ArtifactStore,
                 overlap: bool = False, start_timeout_s: float = 120.0, pool: ActorPool | None = None) -> None:
        super().__init__()
        self.pool = pool or start_runners(hardware_key, start_timeout_s)
        self.actors, self.nodes = self.pool.actors, self.pool.nodes
        self.key = hardware_key
        self.timeout_s = timeout_s
        self.config = config  # measure_candidate's timing arguments: (cpu_calls, threads)
        self.store = store
        self.overlap = overlap
        self.counts: Counter = Counter()
        self.seconds = 0.0
        self._turn = itertools.count()  # round robin over the runners, across batches
        self.failure: ClusterError | None = None

    def _usable(self) -> list[int]:
        """Runner actors whose node is still in the cluster; a job with none left must end."""
        alive = {n.node_id for n in matching_nodes(self.key)}
        usable = [i for i, node in enumerate(self.nodes) if node in alive]
        if not usable:
            raise ClusterError(f"no node with hardware {self.key} is left in the cluster")
        return usable

    def run(self, runner_inputs: list[RunnerInput]) -> list[RunnerFuture]:
        with stopwatch(self), remember_failure(self):
            return self._run(runner_inputs)

    def _run(self, runner_inputs: list[RunnerInput]) -> list[RunnerFuture]:
        usable = self._usable()
        futures = []
        for inp in runner_inputs:
            i = usable[next(self._turn) % len(usable)]
            ref = self.actors[i].measure.remote(self.store.pop(str(inp.artifact_path)), str(inp.device_type),
                                                [list(a.as_json()) for a in inp.args_info], self.config)
            futures.append(RayRunnerFuture(ref, self.nodes[i], self.timeout_s * len(runner_inputs), self.counts))
        if not self.overlap:
            for future in futures:
                future.result()  # the batch is measured before the next build starts
        return futures

    def check(self, jobs: list[tuple[Any, ...]]) -> list[Outcome]:
        """Record checks spread over the runners of this hardware key, in parallel."""
        usable = self._usable()
        sent = []
        for job in jobs:
            i = usable[next(self._turn) % len(usable)]
            sent.append((self.actors[i].check.remote(*job), self.nodes[i]))
        outcomes = []
        for ref, node in sent:
            try:
                _, value, error = await_result(ref, node, self.timeout_s * len(jobs))
                outcomes.append(Outcome(value=value, error=error))
            except Exception as exc:  # noqa: BLE001 - the runner died or its node left
                outcomes.append(Outcome(error=_error_text(exc)))
        return outcomes

    def close(self) -> None:
        self.pool.close()
