"""Schema changes go through Alembic: from empty and from every earlier revision, on both back ends."""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tests.tir_helpers import TARGET, checked, matmul, record
from tuner.db import models
from tuner.db.database import signed_shash
from tuner.db.engine import make_engine
from tuner.db.migrate import current_revision, head_revision, upgrade
from tuner.hardware import fingerprint_for
from tuner.pipeline import open_database


def _schema_diff(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), models.Base.metadata)


def test_upgrade_from_empty_matches_the_models_and_is_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision(engine) == "0006"
    upgrade(engine)  # no-op
    assert _schema_diff(engine) == []


def _old_record_row(mod, secs: list[float]) -> dict:  # noqa: ANN001
    """A tuning_records row as revision 0001 stored it."""
    from tvm.s_tir import meta_schedule as ms

    scratch = ms.database.MemoryDatabase()
    trace, run_secs, target, args_info = record(scratch, mod, secs).as_json()
    return dict(target_json=json.dumps(target, sort_keys=True), trace_json=json.dumps(trace),
                args_info_json=json.dumps(args_info), run_secs_json=json.dumps(run_secs),
                mean_run_secs=sum(secs) / len(secs), team="vision", job_id="old",
                tuner_version="0.0.1", created_at=models.utcnow())


def test_upgrade_from_0001_keeps_and_backfills_data(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine, "0001")
    fp = fingerprint_for(TARGET)
    old_fp = {k: v for k, v in fp.as_dict().items() if k != "family"}
    mod = matmul(16)
    from tvm.s_tir.meta_schedule.database import Workload

    meta = sa.MetaData()
    meta.reflect(engine)
    hw, wl, rec = (meta.tables[n] for n in ("hardware", "workloads", "tuning_records"))
    with engine.begin() as conn:
        conn.execute(hw.insert().values(key=fp.key, kind="cpu", fingerprint_json=json.dumps(old_fp),
                                        created_at=models.utcnow()))
        wid = conn.execute(wl.insert().values(
            shash=signed_shash(mod), mod_sha256="x" * 64, mod_json=Workload(mod).as_json()[1],
            created_at=models.utcnow())).inserted_primary_key[0]
        fast, slow = _old_record_row(mod, [1e-4]), _old_record_row(mod, [2e-4])
        for row in (fast, fast, slow):  # 0001 let the same measurement be stored twice
            conn.execute(rec.insert().values(workload_id=wid, hardware_key=fp.key, **row))

    upgrade(engine)
    assert current_revision(engine) == "0006"
    assert _schema_diff(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(models.Hardware.family)).scalar_one() == fp.family
        rows = conn.execute(sa.select(models.TuningRecord.record_sha256, models.TuningRecord.private)).all()
    assert len(rows) == 2 and all(len(digest) == 64 and private is False for digest, private in rows)
    db = open_database(db_url, TARGET, team="other")
    # Rows of older revisions are unchecked: served only once checked (on first use).
    assert db.best(mod) is None and db.fastest_unchecked(mod).mean_run_secs == 1e-4
    assert checked(db, mod).passed == 1
    assert db.best(mod).mean_run_secs == 1e-4 and db.best(mod).team == "vision"
    db.commit_tuning_record(record(db, mod, [1e-4]))  # the very measurement again: deduplicated
    assert len(db) == 2


def test_downgrade_and_upgrade_again(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    from alembic import command

    from tuner.db.migrate import alembic_config

    command.downgrade(alembic_config(engine), "0001")
    assert current_revision(engine) == "0001"
    upgrade(engine)
    assert current_revision(engine) == "0006" and _schema_diff(engine) == []
