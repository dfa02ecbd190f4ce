"""MetaSchedule Builder and Runner on this machine, over persistent worker processes.

They implement MetaSchedule's ``PyBuilder``/``PyRunner`` so the task scheduler drives them like
its own; the Ray versions implement the same interfaces over actors.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.runner import (
    PyRunner,
    PyRunnerFuture,
    RunnerFuture,
    RunnerInput,
    RunnerResult,
)

from .kernel_check import check_kernel
from .pool import Outcome, WorkerPool
from .worker_tasks import build_candidate, dumps_target, measure_candidate


@contextmanager
def stopwatch(owner: Any) -> Iterator[None]:
    """Adds the block's wall time to ``owner.seconds``: the per-trial cost split in reports."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        owner.seconds += time.perf_counter() - t0


@derived_object
class LocalBuilder(PyBuilder):
    """Builds candidates in `workers` long-lived processes, in parallel."""

    def __init__(self, workers: int, timeout_s: float) -> None:
        super().__init__()
        self.pool = WorkerPool(workers, "builder")
        self.timeout_s = timeout_s
        self.out_dir = tempfile.mkdtemp(prefix="tuner-builds-")
        self.seconds = 0.0  # wall time the task scheduler waited on builds

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        with stopwatch(self):
            return self._build(build_inputs)

    def _build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        jobs = [
            (tvm.ir.save_json(inp.mod), dumps_target(inp.target), self.out_dir)
            for inp in build_inputs
        ]
        return [
            BuilderResult(o.value, None) if o.error is None else BuilderResult(None, o.error)
            for o in self.pool.map(build_candidate, jobs, self.timeout_s)
        ]

    def close(self) -> None:
        self.pool.shutdown()
        shutil.rmtree(self.out_dir, ignore_errors=True)


class BuildProcess:
    """Builds one candidate at a time in a process of its own, killed when the build runs past
    its timeout. A Ray builder actor builds through it: compiled in the actor itself, a
    candidate LLVM took minutes over (a squeezenet softmax, 8.5 CPU minutes and counting) went on
    after the driver had given up on it, and every build queued on that actor waited behind it,
    so the whole search stalled."""

    def __init__(self) -> None:
        self.pool = WorkerPool(1, "builder")
        self.out_dir = tempfile.mkdtemp(prefix="tuner-ray-build-")

    def build(self, mod_json: str, target: dict[str, Any], timeout_s: float,
              fn: Callable[[str, dict[str, Any], str], str] = build_candidate) -> tuple[str | None, bytes | None]:
        """(error, None) or (None, the shared library's bytes)."""
        (outcome,) = self.pool.map(fn, [(mod_json, target, self.out_dir)], timeout_s)
        if outcome.error is not None:
            return outcome.error, None
        with open(outcome.value, "rb") as fh:
            data = fh.read()
        shutil.rmtree(os.path.dirname(outcome.value), ignore_errors=True)
        return None, data


@derived_object
class DoneFuture(PyRunnerFuture):
    """A measurement that already finished (the local runner measures synchronously)."""

    def __init__(self, run_secs: list[float] | None, error: str | None) -> None:
        super().__init__()
        self.run_secs = run_secs
        self.error = error

    def done(self) -> bool:
        return True

    def result(self) -> RunnerResult:
        return RunnerResult(self.run_secs, self.error)


@derived_object
class LocalRunner(PyRunner):
    """Measures one candidate at a time in one process.

    Policy: measurements never overlap each other, and because `run` returns only after every
    candidate is measured, the task scheduler cannot build the next batch meanwhile, so builds
    never share the cores with a measurement either.
    """

    def __init__(
        self,
        timeout_s: float,
        cpu_calls: int,
        threads: int = 0,
    ) -> None:
        super().__init__()
        self.pool = WorkerPool(1, "runner")
        self.timeout_s = timeout_s
        # `threads`: TVM runtime threads per CPU measurement (the target's cores).
        self.config = (cpu_calls, threads)
        self.seconds = 0.0  # wall time the task scheduler waited on measurements
        self.measured = 0

    def run(self, runner_inputs: list[RunnerInput]) -> list[RunnerFuture]:
        with stopwatch(self):
            return self._run(runner_inputs)

    def _run(self, runner_inputs: list[RunnerInput]) -> list[RunnerFuture]:
        futures = []
        for inp in runner_inputs:
            job = (
                str(inp.artifact_path),
                str(inp.device_type),
                [list(a.as_json()) for a in inp.args_info],
                *self.config,
            )
            (outcome,) = self.pool.map(measure_candidate, [job], self.timeout_s)
            futures.append(DoneFuture(outcome.value, outcome.error))
            self.measured += 1
        return futures

    def close(self) -> None:
        self.pool.shutdown()


class LocalChecker:
    """Record checks (cluster/kernel_check.py) in worker processes on this machine, started on
    the first check: a wrong kernel that crashes takes down its worker, not the job. `pool`: an
    existing pool to run them in (the job's builders, already warm), which stays its owner's."""

    def __init__(self, workers: int, timeout_s: float, pool: WorkerPool | None = None) -> None:
        self.workers = workers
        self.timeout_s = timeout_s
        self.pool = pool
        self._owned = pool is None

    def __call__(self, jobs: list[tuple[Any, ...]]) -> list[Outcome]:
        if not jobs:
            return []
        if self.pool is None:
            self.pool = WorkerPool(self.workers, "check")
        return self.pool.map(check_kernel, jobs, self.timeout_s)

    def close(self) -> None:
        if self._owned and self.pool is not None:
            self.pool.shutdown()
            self.pool = None
