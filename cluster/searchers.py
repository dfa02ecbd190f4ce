"""Searcher actors: task-level distribution of one job's search over the nodes of a Ray cluster.

MetaSchedule's search (evolutionary rounds, cost-model training) runs in the process that calls
``tune_tasks``; in one driver it is the bottleneck past a few nodes (docs/scaling.md). A job
therefore splits its tasks into shares and each share is searched by its own actor, which
imports MetaSchedule once and commits its records straight into the job's one database. All
searchers of a job share its builder and runner pools (ray_backend.ActorPool), so measurements
still happen one at a time per node and only on nodes with the job's hardware key.

This module knows nothing of what a share holds: the caller passes the function that searches
one (it lives above ``cluster/``, which must not import the pipeline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorUnschedulableError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .ray_backend import ClusterError, _error_text, alive_node_ids, await_started, nodes


@ray.remote(num_cpus=0, max_restarts=1, max_task_retries=1)
class SearchActor:
    """Pays MetaSchedule's import (with the tensor intrinsics) once, then searches shares.

    ``num_cpus=0``: builders hold the cluster's CPUs; a searcher's rounds alternate with its
    builds and measurements rather than competing with them for long."""

    def __init__(self) -> None:
        import tvm.s_tir.meta_schedule  # noqa: F401

        from tuner.schedules.intrinsics import load_tensor_intrinsics

        load_tensor_intrinsics()
        self.node_id = ray.get_runtime_context().get_node_id()

    def ready(self) -> str:
        return self.node_id

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Where searchers post progress; the driver reads it to drive the job's one progress bar."""

    def __init__(self, shares: int) -> None:
        self.trials = [0] * shares
        self.best_ms: list[float | None] = [None] * shares
        self.messages: list[str] = []

    def update(self, share: int, trials: int, best_ms: float | None) -> None:
        self.trials[share] = max(self.trials[share], trials)  # a retried share starts again at 0
        if best_ms is not None:
            self.best_ms[share] = best_ms

    def trials_of(self, share: int) -> int:
        return self.trials[share]

    def message(self, share: int, text: str) -> None:
        self.messages.append(f"searcher {share}: {text}")

    def read(self) -> tuple[list[int], list[float | None], list[str]]:
        messages, self.messages = self.messages, []
        return self.trials, self.best_ms, messages


@dataclass
class Searchers:
    actors: list
    nodes: list[str]
    board: Any  # ProgressBoard handle
    same_host_only: bool = False
    quiet_keys: tuple[str, ...] = ()

    def close(self) -> None:
        for actor in [*self.actors, self.board]:
            ray.kill(actor)


def placement(count: int, same_host_only: bool, quiet_keys: tuple[str, ...] = (),
              exclude: tuple[str, ...] = ()) -> list[str]:
    """Node ids for ``count`` searchers, round robin over the alive nodes.

    ``same_host_only``: the job's database is a SQLite file, which only processes on the
    driver's machine can open; searchers then stay on nodes with the driver's address.
    ``quiet_keys``: CPU hardware keys the job measures on; a search beside a measurement on the
    same cores disturbs it, so nodes without them are preferred while there are any.
    ``exclude``: nodes known to be gone, which the cluster may still list as alive for a while."""
    alive = [n for n in nodes() if n.alive and n.node_id not in exclude]
    if same_host_only:
        here = ray.util.get_node_ip_address()
        alive = [n for n in alive if n.address in (here, "127.0.0.1", "localhost")]
        if not alive:
            raise ClusterError("the tuning database is a SQLite file, which only this machine can open, "
                               "and no Ray node runs on this machine: use a PostgreSQL --db to search on other nodes")
    if not alive:
        raise ClusterError("no alive node in the Ray cluster")
    quiet = [n for n in alive if not set(quiet_keys) & set(n.hardware_keys)]
    chosen = quiet or alive
    return [chosen[i % len(chosen)].node_id for i in range(count)]


def _start(node_ids: list[str], start_timeout_s: float) -> tuple[list, list[str]]:
    # Pinned (soft affinity was seen to stack searchers on one node); a searcher whose node
    # leaves is replaced by `run_shares` on another.
    actors = [SearchActor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
              for node in node_ids]
    return actors, await_started(actors, "searcher actors", start_timeout_s)


def start_searchers(count: int, same_host_only: bool, start_timeout_s: float,
                    quiet_keys: tuple[str, ...] = ()) -> Searchers:
    actors, started = _start(placement(count, same_host_only, quiet_keys), start_timeout_s)
    # The board lives on the driver's own node: it fate-shares with the job, not with a searcher.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    board = ProgressBoard.options(scheduling_strategy=here).remote(count)
    return Searchers(actors, started, board, same_host_only, quiet_keys)


def run_shares(searchers: Searchers, fn: Callable[..., Any], shares: list[tuple],
               on_progress: Callable[[list[int], list[float | None], list[str]], None],
               poll_s: float = 0.5, start_timeout_s: float = 300.0) -> list[Any]:
    """``fn(*share)`` on searcher i for share i, in parallel; returns their results in order.

    A searcher whose process dies is restarted by Ray on its node and the call retried; one
    whose node left the cluster is replaced once by a searcher on another node. Either way the
    share goes on from the records already committed (``fn`` reads what the board says was
    done). An exception raised by ``fn`` ends the job with its message."""
    refs = [actor.call.remote(fn, *share) for actor, share in zip(searchers.actors, shares)]
    results: list[Any] = [None] * len(refs)
    moved = [False] * len(refs)
    pending = dict(enumerate(refs))
    while pending:
        ready, _ = ray.wait(list(pending.values()), num_returns=1, timeout=poll_s)
        on_progress(*ray.get(searchers.board.read.remote()))
        for i in [i for i, ref in pending.items() if ref in ready]:
            try:
                results[i] = ray.get(pending.pop(i))
            except RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                raise ClusterError(f"searcher {i} failed: {_error_text(cause)}") from None
            except (RayActorError, ActorUnschedulableError) as exc:  # the latter: pinned to a node that left
                gone = isinstance(exc, ActorUnschedulableError) or searchers.nodes[i] not in alive_node_ids()
                if moved[i] or not gone:
                    raise ClusterError(f"searcher {i} died and could not go on: {_error_text(exc)}") from None
                moved[i] = True
                lost = (searchers.nodes[i],)
                (actor,), (node,) = _start(placement(1, searchers.same_host_only, searchers.quiet_keys, lost),
                                           start_timeout_s)
                searchers.actors[i], searchers.nodes[i] = actor, node
                pending[i] = actor.call.remote(fn, *shares[i])
    on_progress(*ray.get(searchers.board.read.remote()))
    return results
