"""Persistent workers survive candidates that crash or hang them."""

from __future__ import annotations

import os
import signal
import time

from tuner.cluster.pool import WorkerPool


def crash(code: int) -> int:
    if code < 0:
        os.kill(os.getpid(), signal.SIGSEGV)
    return code * 2


def hang(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_crash_is_isolated_and_pool_recovers() -> None:
    pool = WorkerPool(2, "builder")
    try:
        outcomes = pool.map(crash, [(1,), (-1,), (3,)], timeout_s=60)
        assert outcomes[0].value == 2 and outcomes[2].value == 6
        assert outcomes[1].error == "builder: worker process crashed"
        assert pool.map(crash, [(5,)], timeout_s=60)[0].value == 10
    finally:
        pool.shutdown()


def test_hung_job_times_out_and_others_finish() -> None:
    pool = WorkerPool(1, "runner")
    try:
        outcomes = pool.map(hang, [(0.01,), (30,), (0.02,)], timeout_s=5)
        assert outcomes[0].value == 0.01
        assert "timed out after 5 s" in outcomes[1].error
        assert outcomes[2].value == 0.02
    finally:
        pool.shutdown()


def test_job_exception_is_reported_with_its_message() -> None:
    pool = WorkerPool(1, "builder")
    try:
        (outcome,) = pool.map(int, [("not a number",)], timeout_s=30)
        assert outcome.error.startswith("builder: ValueError") and "not a number" in outcome.error
    finally:
        pool.shutdown()


def fake_build(mod_json: str, target: dict, out_dir: str) -> str:
    """A build that hangs on "hang" and otherwise writes `mod_json` as the library."""
    if mod_json == "hang":
        time.sleep(120)
    folder = os.path.join(out_dir, f"b{os.getpid()}-{time.monotonic_ns()}")
    os.makedirs(folder)
    path = os.path.join(folder, "lib.so")
    with open(path, "w") as fh:
        fh.write(mod_json)
    return path


def test_a_ray_builders_hung_build_is_killed_and_the_next_one_builds() -> None:
    """What a Ray builder actor builds through: a build past the timeout is killed, not waited
    for, so the builds queued behind it on the same actor go on (one that LLVM took minutes over
    stalled a whole search)."""
    from tuner.cluster.local import BuildProcess

    builds = BuildProcess()
    try:
        t0 = time.monotonic()
        error, data = builds.build("hang", {}, 3, fake_build)
        assert data is None and "timed out after 3 s" in error
        assert time.monotonic() - t0 < 60
        error, data = builds.build("library", {}, 60, fake_build)
        assert error is None and data == b"library"
        assert os.listdir(builds.out_dir) == []  # the build's folder went with its bytes
    finally:
        builds.pool.shutdown()
