"""Cost models trained from the shared database: trained per hardware family (and team, for
private records), stored beside the records, loaded as the starting model of every search on
that family, and retrained in the background after jobs that added enough records.

A team's tenth model should tune faster than its first: every search otherwise starts from a
cost model that knows nothing, while the database holds thousands of measured candidates of the
same hardware.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import tvm
from sqlalchemy import Engine, select
from tvm.target import Target

from tuner.db import cost_models as store
from tuner.db import models
from tuner.db.database import SQLDatabase, TVM_VERSION, record_from_json, workload_of
from tuner.schedules.cost_model import (
    BLOB_FORMAT,
    BlobError,
    Measured,
    Trained,
    from_blob,
    holdout_score,
    record_samples,
    to_blob,
    train,
)

from ..errors import TunerError
from ..progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartModel:
    """What a search starts from: the trained model, and what the report says of it."""

    trained: Trained | None
    describe: dict[str, Any]


def start_model(database: SQLDatabase, progress: Progress) -> StartModel:
    """The family's stored model for this team (its own, else the shared one), or none. A blob
    that cannot be used (corrupted, another format or TVM version) is ignored with a warning:
    the search then starts from nothing, as it always did."""
    p = database.provenance
    row = store.load(database.engine, p.family, TVM_VERSION, p.team)
    if row is None:
        return StartModel(None, {"transferred": False})
    try:
        trained = from_blob(row.blob, TVM_VERSION)
    except BlobError as exc:
        message = f"the stored cost model of hardware family {p.family} is ignored: {exc}"
        log.warning(message)
        progress.message(message)
        return StartModel(None, {"transferred": False, "ignored": str(exc)})
    return StartModel(trained, {"transferred": True, "owner": row.owner or "shared", "records": row.records,
                                "workloads": row.workloads, "holdout_spearman": row.holdout_spearman})


def _measured(rows: list[store.TrainingRow]) -> list[Measured]:
    workloads: dict[int, Any] = {}
    out = []
    for row in rows:
        if row.shash not in workloads:
            workloads[row.shash] = workload_of(row.shash, row.mod_json)
        workload = workloads[row.shash]
        payload = [json.loads(row.trace_json), [row.mean_run_secs], json.loads(row.target_json),
                   json.loads(row.args_info_json) if row.args_info_json else None]
        try:
            record = record_from_json(payload, workload)
        except Exception:  # noqa: BLE001 - a trace this TVM cannot load teaches it nothing
            continue
        out.append(Measured(workload.mod, record.trace, row.mean_run_secs, list(record.args_info)))
    return out


def train_family(engine: Engine, family: str, owner: str, cores: int, min_records: int) -> dict[str, Any]:
    """Train and store the family's model for `owner` ("" shared); returns its listing row."""
    t0 = time.perf_counter()
    rows = list(store.trainable_records(engine, family, owner))
    if len(rows) < min_records:
        raise TunerError(f"hardware family {family} has {len(rows)} usable records for "
                         f"{owner or 'the shared model'}; training needs at least {min_records}")
    target = Target(json.loads(rows[0].target_json))
    samples = record_samples(_measured(rows), target)
    if samples.size < min_records:
        raise TunerError(f"only {samples.size} of {len(rows)} records of family {family} replay under TVM "
                         f"{tvm.__version__}; training needs at least {min_records}")
    score = holdout_score(samples, cores)
    trained = train(samples, cores, {"family": family, "owner": owner, "tvm_version": TVM_VERSION,
                                     "holdout_spearman": score})
    store.store(engine, family, TVM_VERSION, owner, trained.meta, to_blob(trained), BLOB_FORMAT,
                time.perf_counter() - t0)
    return next(m for m in store.listing(engine, family) if m["owner"] == (owner or "shared"))


def family_of(engine: Engine, hardware_key: str) -> str:
    with engine.connect() as conn:
        family = conn.scalar(select(models.Hardware.family).where(models.Hardware.key == hardware_key))
    if family is None:
        raise TunerError(f"unknown hardware key {hardware_key!r} (see `tuner db stats`)")
    return str(family)


def new_records(engine: Engine, family: str, owner: str) -> int:
    """Usable records of the family that its stored model (of this TVM) has not learned from."""
    row = store.load(engine, family, TVM_VERSION, owner or None)
    learned = row.records if row is not None and row.owner == owner else 0
    return store.count_trainable(engine, family, owner) - learned


def retraining_due(engine: Engine, family: str, threshold: int) -> bool:
    """Whether enough usable records arrived since the family's models were trained (the shared
    one, or a team's private one) to train them again."""
    owners = [store.SHARED, *store.owners_with_private_records(engine, family)]
    return max(new_records(engine, family, owner) for owner in owners) >= threshold


def start_retraining(db_url: str, hardware_key: str, min_records: int, log_dir: str) -> None:
    """`tuner db model --train` for the hardware key's family in its own process: never blocks
    the run (nor dies with it). Started once the run has timed its module: on a 2-core machine
    a training beside the timing made resnet50 read 80 ms instead of 44."""
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, "cost-model-training.log"), "ab") as sink:
        # The URL goes by environment, not argument: a password in it would show in `ps`.
        subprocess.Popen([sys.executable, "-m", "tuner.cli", "db", "model", "--train", "--hardware", hardware_key],
                         stdout=sink, stderr=sink, stdin=subprocess.DEVNULL, start_new_session=True,
                         env={**os.environ, "TUNER_DB_URL": db_url, "TUNER_COST_MODEL__MIN_RECORDS": str(min_records)})
