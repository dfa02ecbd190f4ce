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
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .ray_backend import ClusterError, _error_text, nodes


@ray.remote(num_cpus=0, max_restarts=1, max_task_retries=1)
class SearchActor:
    """Pays MetaSchedule's import (tensor intrinsics: 10-50 s) once, then searches shares.

    ``num_cpus=0``: builders hold the cluster's CPUs; a searcher's rounds alternate with its
    builds and measurements rather than competing with them for long."""

    def __init__(self) -> None:
        import tvm.s_tir.meta_schedule  # noqa: F401
        import tvm.s_tir.tensor_intrin  # noqa: F401

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

    def close(self) -> None:
        for actor in [*self.actors, self.board]:
            ray.kill(actor)


def placement(count: int, same_host_only: bool) -> list[str]:
    """Node ids for ``count`` searchers, round robin over the alive nodes.

    ``same_host_only``: the job's database is a SQLite file, which only processes on the
    driver's machine can open; searchers then stay on nodes with the driver's address."""
    alive = [n for n in nodes() if n.alive]
    if same_host_only:
        here = ray.util.get_node_ip_address()
        alive = [n for n in alive if n.address in (here, "127.0.0.1", "localhost")]
        if not alive:
            raise ClusterError("the tuning database is a SQLite file, which only this machine can open, "
                               "and no Ray node runs on this machine: use a PostgreSQL --db to search on other nodes")
    if not alive:
        raise ClusterError("no alive node in the Ray cluster")
    return [alive[i % len(alive)].node_id for i in range(count)]


def start_searchers(count: int, same_host_only: bool, start_timeout_s: float) -> Searchers:
    targets = placement(count, same_host_only)
    actors = [SearchActor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)).remote()
              for node in targets]
    board = ProgressBoard.remote(count)
    try:
        started = ray.get([a.ready.remote() for a in actors], timeout=start_timeout_s)
    except GetTimeoutError:
        raise ClusterError(f"searcher actors did not start within {start_timeout_s:.0f} s") from None
    except RayError as exc:
        raise ClusterError(f"searcher actors cannot start: {_error_text(exc)} (can the node import TVM?)") from None
    return Searchers(actors, started, board)


def run_shares(searchers: Searchers, fn: Callable[..., Any], shares: list[tuple],
               on_progress: Callable[[list[int], list[float | None], list[str]], None],
               poll_s: float = 0.5) -> list[Any]:
    """``fn(*share)`` on searcher i for share i, in parallel; returns their results in order.

    A searcher whose process dies is restarted by Ray and its share searched again (records it
    committed stay; the new search starts from them). An exception raised by ``fn`` ends the
    job with its message."""
    refs = [actor.call.remote(fn, *share) for actor, share in zip(searchers.actors, shares)]
    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s)
        on_progress(*ray.get(searchers.board.read.remote()))
    results = []
    for i, ref in enumerate(refs):
        try:
            results.append(ray.get(ref))
        except RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            raise ClusterError(f"searcher {i} failed: {_error_text(cause)}") from None
        except RayActorError as exc:
            raise ClusterError(f"searcher {i} died twice: {_error_text(exc)}") from None
    on_progress(*ray.get(searchers.board.read.remote()))
    return results

