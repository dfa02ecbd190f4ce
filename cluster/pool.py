"""Long-lived worker processes that survive the candidates that kill them.

Each worker imports TVM once (DEVELOPERS.md: never per trial). A candidate that segfaults,
hangs past its timeout or aborts takes down at most its own pool; the pool is rebuilt and the
candidate is reported as failed, while the job goes on.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from .worker_tasks import warm_up


@dataclass
class Outcome:
    value: Any = None
    error: str | None = None


class WorkerPool:
    """A process pool with per-job timeouts and crash isolation."""

    def __init__(self, workers: int, name: str) -> None:
        self.workers = max(1, workers)
        self.name = name
        self._ctx = multiprocessing.get_context("spawn")
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=self._ctx, initializer=warm_up
            )
        return self._executor

    def start(self) -> None:
        """Start the workers now (they import TVM in the background while the caller works)."""
        with self._lock:
            pool = self._pool()
            for _ in range(self.workers):
                pool.submit(int, 0)

    def _kill(self) -> None:
        if self._executor is None:
            return
        for proc in list(getattr(self._executor, "_processes", {}).values()):
            if proc.is_alive():
                proc.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self.restarts += 1

    def shutdown(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None

    def map(
        self, fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], timeout_s: float
    ) -> list[Outcome]:
        """Run `fn(*job)` for every job; a crash is retried alone once to find the culprit."""
        with self._lock:
            outcomes = self._map_once(fn, jobs, timeout_s)
            for i, out in enumerate(outcomes):
                if out.error == "__crashed__":
                    # The pool died under several jobs: rerun this one alone to know if it is guilty.
                    outcomes[i] = self._map_once(fn, [jobs[i]], timeout_s)[0]
                    if outcomes[i].error == "__crashed__":
                        outcomes[i] = Outcome(error=f"{self.name}: worker process crashed")
            return outcomes

    def _map_once(
        self, fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], timeout_s: float
    ) -> list[Outcome]:
        try:
            futures: list[Future] = [self._pool().submit(fn, *job) for job in jobs]
        except BrokenProcessPool:
            self._kill()
            futures = [self._pool().submit(fn, *job) for job in jobs]
        outcomes: list[Outcome] = []
        for fut in futures:
            try:
                outcomes.append(Outcome(value=fut.result(timeout=timeout_s)))
            except FutureTimeout:
                outcomes.append(Outcome(error=f"{self.name}: timed out after {timeout_s:g} s"))
                self._kill()
            except BrokenProcessPool:
                # This job, or another one beside it, killed a worker: rerun it alone later.
                outcomes.append(Outcome(error="__crashed__"))
                self._kill()
            except CancelledError:
                # Its pool was killed for another job's timeout or crash: rerun it alone later.
                outcomes.append(Outcome(error="__crashed__"))
            except Exception as exc:  # the job's own exception, raised in the worker
                text = str(exc).strip() or type(exc).__name__
                outcomes.append(Outcome(error=f"{self.name}: {type(exc).__name__}: {text}"))
        return outcomes
