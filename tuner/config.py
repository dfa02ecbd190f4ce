"""Settings: configs/default.toml, then $TUNER_CONFIG, then TUNER_* environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

APP_NAME = "tuner"


class SearchSettings(BaseModel):
    population_size: int = Field(256, ge=4)
    # A search started from the family's transferred cost model evolves from its first round (a
    # cold one draws at random until its model has seen enough): a smaller population makes each
    # of its rounds cheaper, and a transferred search needs no random warm-up round, so it may
    # measure fewer trials per round than a cold one (`tuning.trials_per_iter`'s minimum) and
    # leave more of the budget to the gradient phase. None: `population_size`, the cold minimum.
    transferred_population_size: int | None = Field(64, ge=4)
    transferred_min_trials_per_iter: int | None = Field(4, ge=1)
    # The share of each round of a transferred search measured from random schedules rather than
    # the model's picks: a model trained on other kernels can misrank a kind it has only seen at
    # other shapes (the transformer's softmax, which a cold search's random first round finds).
    # None: MetaSchedule's eps_greedy (0.05: none in a round of fewer than 20). 0.25 (one in a round
    # of 4) did not find that softmax's best schedules either (README, session 45): left unset.
    transferred_eps_greedy: float | None = Field(None, ge=0, le=1)
    genetic_num_iters: int = Field(3, ge=1)
    init_min_unmeasured: int = Field(32, ge=1)
    init_min_unmeasured_gpu: int = Field(8, ge=1)
    max_trials_per_iter: int = Field(64, ge=1)
    # The final timing (tuner/search/final_timing.py): a task's `final_top` fastest searched
    # records and its default, timed again in `final_rounds` runner calls by turns, pick the
    # record it is served. 0 (default, README says why): served by the search's own times.
    final_top: int = Field(0, ge=0)
    final_rounds: int = Field(5, ge=1)


class WorkerSettings(BaseModel):
    builders: int = Field(0, ge=0)
    build_timeout_s: float = Field(120.0, gt=0)
    run_timeout_s: float = Field(60.0, gt=0)
    # "ray": actors on a Ray cluster (a local Ray is started, when there is something to tune,
    # if no ray_address is given); "local": worker processes on this machine, no Ray.
    backend: str = Field("ray", pattern="^(local|ray)$")
    ray_address: str = ""
    # False: a batch is measured before the next one is built (builds never share a measuring
    # node's cores). True: builds go on during measurements (builder nodes != runner nodes).
    overlap_builds: bool = False
    actor_start_timeout_s: float = Field(120.0, gt=0)
    # Ray: searcher actors per job, each searching a share of the tasks. The search is the
    # bottleneck past a few nodes (docs/scaling.md).
    searchers: int = Field(1, ge=1)
    # Ray: even one share is searched in a searcher actor, not in the driver: TVM's search once
    # aborted the whole `tuner run` from C++ (squeezenet, 64 trials; about 1 run in 7), which in an
    # actor costs a restart of the actor, which goes on with the rest of the budget.
    isolated_search: bool = True


class MeasureSettings(BaseModel):
    # CPU candidates: lone calls timed, each after the weights' cache flush (cluster/worker_tasks.py).
    cpu_timed_calls: int = Field(20, ge=1)
    model_runs: int = Field(20, ge=1)
    model_min_seconds: float = Field(1.0, ge=0)
    # CPU: instances of each engine (module VMs, ONNX Runtime sessions) timed; the fastest counts.
    instances: int = Field(3, ge=1)
    # CPU timing waits (at most quiet_wait_s) until the machine's other work uses less than
    # quiet_busy_percent of its CPUs: a latency timed beside another job is that job's too.
    quiet_wait_s: float = Field(20.0, ge=0)
    quiet_busy_percent: float = Field(15.0, gt=0, le=100)


class VerifySettings(BaseModel):
    fp32_atol: float = 1e-3
    fp32_rtol: float = 1e-3
    fp16_atol: float = 2e-2
    fp16_rtol: float = 2e-2


class CheckSettings(BaseModel):
    """Record checks: a record is served only after its kernel matched its workload's."""

    # Records checked per task, fastest first, before the task falls back to its next checked
    # record or its default schedule (each wrong one costs a build and a run).
    max_per_task: int = Field(4, ge=1)
    timeout_s: float = Field(600.0, gt=0)
    seed: int = 0
    # A model that fails verification with checked records: compilations the bisection for the
    # records to blame may spend (about log2(tuned tasks) + 1 per record) before it withholds
    # every tuned record instead.
    max_bisect_compiles: int = Field(24, ge=2)


class CostModelSettings(BaseModel):
    """Cost models trained on the database per hardware family (cost_model_training.py)."""

    # Start every search from its family's stored model (when there is one).
    transfer: bool = True
    # Retrain a family's model in the background once this many usable records arrived since.
    retrain_after_records: int = Field(500, ge=1)
    # Fewer records than this train no model.
    min_records: int = Field(64, ge=2)
    # Kernels without a record take the default schedule the family's model ranks best among
    # re-draws of the plain default (CPU). Off by default: a model trained on resnet50 alone
    # (2066 records) made transformer's defaults 12% faster and shufflenet's 30% slower.
    rank_defaults: bool = False
    # When a search that started from a family's model refits it: "adaptive" (when the search's
    # own samples grew by a fifth since the last fit, as a cold search refits; the transferred
    # samples do not count toward it: 18 refits for resnet50 at 16 trials/task) or "every_batch"
    # (its own new measurements count at once: 78 refits on ~2,600 samples there, and on 2 cores
    # transferred searches took 1.2-1.6x a cold one's wall time). The transformer from one
    # 5-model database (znver4, bench/results/transfer-znver4-fill5-*): adaptive reached the cold
    # runs' final estimates in 44%, 100%, 38% of the trials (3 seeds) at 1.12-1.22x their wall
    # time; every_batch in 60% and never (2 seeds) at 1.25-1.64x. "residual" keeps the family's
    # model frozen and fits only the search's own samples to what it leaves unexplained, after
    # every batch (cheap fits): on AMD EPYC znver3 (a 3-model fill, transformer) 85%, 113%, 100%
    # of the cold trials at 1.41-1.54x its wall time, against adaptive's never and 45% at
    # 1.82x and 1.39x (bench/results/transfer-znver3-*-transformer.json).
    retrain: Literal["residual", "every_batch", "adaptive"] = "adaptive"


class CompileSettings(BaseModel):
    # How a CPU module's activations share memory (tuner/compile/storage_plan.py): "reuse"
    # (TVM's plan), "per-shape" (a block per tensor shape: each core keeps its cache lines when
    # the cores share no L3), "per-size" (blocks shared only by tensors within `size_ratio` in
    # size), "auto" (per-shape where the host's cores span several L3s).
    storage_plan: Literal["auto", "reuse", "per-shape", "per-size"] = "auto"
    # "per-size": tenants of a planned block keep sharing it where their sizes are within this ratio.
    size_ratio: float = Field(1.5, ge=1.0)
    # CPU: kernels of searched records timed inside the model against their default schedules
    # before the module is served; records slower there are left out of it
    # (tuner/compile/kernel_choice.py), and the defaults-only module is timed beside the result.
    in_model_choice: bool = True


class ServeSettings(BaseModel):
    """`tuner serve`: limits per team, the job lease, polling."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Jobs tuned at once by this process. SQLite: 1 (one writer); more with PostgreSQL.
    workers: int = Field(1, ge=1)
    max_upload_mb: float = Field(256.0, gt=0)
    # A team's queued + running jobs, and the trials they may still spend; beyond: 429.
    max_active_jobs_per_team: int = Field(4, ge=1)
    max_active_trials_per_team: int = Field(20000, ge=1)
    retry_after_s: int = Field(30, ge=1)
    # A running job's worker renews its lease every heartbeat; a job whose lease ran out is
    # requeued (or failed after max_attempts starts).
    lease_s: float = Field(60.0, gt=0)
    heartbeat_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(2, ge=1)
    # Seconds between looks at the queue and between progress events.
    poll_s: float = Field(1.0, gt=0)
    # A cancelled job's process gets Ctrl-C, then this long to commit and stop, then SIGKILL.
    cancel_grace_s: float = Field(20.0, gt=0)


def _toml_files() -> list[Path]:
    files = [Path(str(resources.files("tuner.configs").joinpath("default.toml")))]
    extra = os.environ.get("TUNER_CONFIG")
    if extra:
        files.append(Path(extra))
    return files


class Settings(BaseSettings):
    """Everything configurable; the TOML defaults keep the numbers in one visible place."""

    model_config = SettingsConfigDict(env_prefix="TUNER_", env_nested_delimiter="__", extra="ignore")

    db_url: str = ""
    team: str = Field("default", min_length=1, max_length=64)
    private: bool = False
    warm_start: bool = True
    kindred_workloads: int = Field(4, ge=0)
    kindred_first_round: bool = False
    trials: int = Field(200, ge=0)
    seed: int = 0
    search: SearchSettings = SearchSettings()
    workers: WorkerSettings = WorkerSettings()
    measure: MeasureSettings = MeasureSettings()
    verify: VerifySettings = VerifySettings()
    checks: CheckSettings = CheckSettings()
    cost_model: CostModelSettings = CostModelSettings()
    compile: CompileSettings = CompileSettings()
    # `tuner serve`: uploads and artifacts live here; empty = under the user data dir.
    storage_dir: str = ""
    serve: ServeSettings = ServeSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_toml_files())
        return (init_settings, env_settings, toml)

    def resolved_db_url(self) -> str:
        """The configured URL, or the zero-setup SQLite file in the user cache dir."""
        if self.db_url:
            return self.db_url
        cache = Path(platformdirs.user_cache_dir(APP_NAME))
        return f"sqlite:///{cache / 'tuning.sqlite'}"

    def resolved_storage_dir(self) -> Path:
        """Where `tuner serve` keeps uploads and artifacts."""
        if self.storage_dir:
            return Path(self.storage_dir).expanduser()
        return Path(platformdirs.user_data_dir(APP_NAME)) / "service"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
