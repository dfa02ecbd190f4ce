"""Shared fixtures: a tiny search so the suite stays within minutes on 2 cores."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.pg import fresh_pg_schema

from tuner.config import CompileSettings, MeasureSettings, SearchSettings, Settings, WorkerSettings

# Tests tune with worker processes, not the default local Ray (a Ray start per test would double
# the suite's time), in this process and in every `tuner` it starts; the Ray path has its own
# tests (test_ray.py, test_ray_local.py: the default, no --ray-address).
os.environ["TUNER_WORKERS__BACKEND"] = "local"
TINY = dict(
    search=SearchSettings(population_size=16, transferred_population_size=16, genetic_num_iters=1,
                          init_min_unmeasured=8, max_trials_per_iter=8,
                          final_top=2, final_rounds=2),
    measure=MeasureSettings(cpu_timed_calls=3, model_runs=5, model_min_seconds=0.0),
    workers=WorkerSettings(backend="local"),
    # Two more compilations per run with records: tests/test_kernel_choice.py has it on.
    compile=CompileSettings(in_model_choice=False),
)


@pytest.fixture
def settings() -> Settings:
    return Settings(**TINY)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tuning.sqlite'}"


def tiny_env(tmp_path: Path) -> dict[str, str]:
    """Environment for `tuner` subprocesses: tiny search, private database and cache."""
    env = dict(os.environ)
    env.update(
        TUNER_SEARCH__POPULATION_SIZE="16",
        TUNER_SEARCH__GENETIC_NUM_ITERS="1",
        TUNER_SEARCH__INIT_MIN_UNMEASURED="8",
        TUNER_SEARCH__MAX_TRIALS_PER_ITER="8",
        TUNER_SEARCH__FINAL_TOP="2",
        TUNER_SEARCH__FINAL_ROUNDS="2",
        TUNER_MEASURE__NUMBER="2",
        TUNER_MEASURE__MIN_REPEAT_MS="5",
        TUNER_MEASURE__MODEL_RUNS="5",
        TUNER_MEASURE__MODEL_MIN_SECONDS="0",
        TUNER_WORKERS__BACKEND="local",
        TUNER_COMPILE__IN_MODEL_CHOICE="false",
        TUNER_DB_URL=f"sqlite:///{tmp_path / 'env.sqlite'}",
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    return env


def sqlite_records(db_file: Path) -> int:
    """Tuning records in a SQLite file that a running job may not have created yet."""
    try:
        with sqlite3.connect(db_file) as conn:
            return conn.execute("SELECT count(*) FROM tuning_records").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def signal_first_descendant(title: str, sig: signal.Signals, stop: threading.Event, hits: list[str]) -> None:
    """Send `sig` to the first process whose title starts with `title` (a Ray actor mid-call:
    `ray::SearchActor.call`) among this test process's descendants, then return; gives up when
    `stop` is set. Only descendants: any such process on the machine was once fair game, and it
    killed the actors of a `tuner run` beside the suite."""
    me = psutil.Process()
    while not stop.is_set() and not hits:
        for proc in me.children(recursive=True):
            try:
                cmd = " ".join(proc.cmdline())
            except psutil.Error:  # gone meanwhile
                continue
            if cmd.startswith(title):
                os.kill(proc.pid, sig)
                hits.append(cmd)
                return
        time.sleep(0.05)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> Iterator[str]:  # noqa: ANN001
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        with fresh_pg_schema() as url:
            yield url
