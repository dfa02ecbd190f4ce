"""Import and export in MetaSchedule's JSON database format: round trips, plain logs, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from tvm.s_tir import meta_schedule as ms

from tests.tir_helpers import TARGET, checked, matmul, record
from tuner.db import models
from tuner.db.transfer import RECORD_FILE, SIDECAR_FILE, WORKLOAD_FILE, export_database, import_database
from tuner.errors import TunerError
from tuner.pipeline import open_database

ONE_CORE = {"kind": "llvm", "num-cores": 1}


def _identities(engine) -> set[tuple]:  # noqa: ANN001
    with Session(engine) as session:
        rows = session.scalars(select(models.TuningRecord)).all()
        return {(r.hardware_key, r.record_sha256, r.team, r.private, r.mean_run_secs) for r in rows}


def _fill(url: str) -> tuple:
    vision = open_database(url, TARGET, team="vision", job_id="job-1")
    secret = open_database(url, ONE_CORE, team="secret", private=True)
    for mod, secs in ((matmul(8), [1e-4]), (matmul(8), [1e10]), (matmul(12), [3e-4])):
        vision.commit_tuning_record(record(vision, mod, secs))
    secret.commit_tuning_record(record(secret, matmul(12), [2e-4], ONE_CORE))
    return vision, secret


def test_export_import_round_trip_keeps_every_record(db_url: str, tmp_path: Path) -> None:
    vision, secret = _fill(db_url)
    out = tmp_path / "export"
    result = export_database(vision.engine, out)
    assert (result.records, result.workloads) == (4, 2)
    assert sorted(result.hardware) == sorted([vision.provenance.hardware_key, secret.provenance.hardware_key])

    # MetaSchedule itself reads our export.
    loaded = ms.database.JSONDatabase(path_workload=str(out / WORKLOAD_FILE),
                                      path_tuning_record=str(out / RECORD_FILE))
    assert len(loaded) == 4
    top = loaded.get_top_k(loaded.commit_workload(matmul(8)), 5)
    assert [float(x) for x in top[0].run_secs] == pytest.approx([1e-4])

    fresh = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    target_db = open_database(fresh, {"kind": "llvm", "num-cores": 3})  # migrated, other hardware only
    imported = import_database(target_db.engine, out)
    assert (imported.records_new, imported.records_duplicate, imported.workloads_new) == (4, 0, 2)
    assert _identities(target_db.engine) == _identities(vision.engine)
    served = open_database(fresh, TARGET, team="anyone")
    assert served.best(matmul(8)) is None  # imported records are checked on first use
    checked(served, matmul(8))
    assert served.best(matmul(8)).mean_run_secs == pytest.approx(1e-4)
    assert served.best(matmul(8)).team == "vision"
    # Importing again adds nothing; exporting the import gives the same records.
    again = import_database(target_db.engine, out)
    assert (again.records_new, again.records_duplicate, again.workloads_known) == (0, 4, 2)
    export_database(target_db.engine, tmp_path / "export2")
    assert (tmp_path / "export2" / RECORD_FILE).read_text() == (out / RECORD_FILE).read_text()


def test_hardware_filters_export_and_import(db_url: str, tmp_path: Path) -> None:
    vision, secret = _fill(db_url)
    only = export_database(vision.engine, tmp_path / "one", hardware=secret.provenance.hardware_key)
    assert (only.records, only.hardware) == (1, [secret.provenance.hardware_key])
    export_database(vision.engine, tmp_path / "all")
    fresh = open_database(f"sqlite:///{tmp_path / 'f.sqlite'}", TARGET)
    r = import_database(fresh.engine, tmp_path / "all", hardware=vision.provenance.hardware_key, team="ops")
    assert (r.records_new, r.hardware) == (3, [vision.provenance.hardware_key])
    assert {i[2] for i in _identities(fresh.engine)} == {"ops"}
    with pytest.raises(TunerError, match="unknown hardware key 'cpu-nope'"):
        export_database(vision.engine, tmp_path / "x", hardware="cpu-nope")
    with pytest.raises(TunerError, match="already holds"):
        export_database(vision.engine, tmp_path / "all")


def _plain_log(directory: Path, target: dict) -> None:
    """A JSON database written by MetaSchedule itself, as a team without tuner would have."""
    directory.mkdir()
    json_db = ms.database.JSONDatabase(work_dir=str(directory))
    for n, secs in ((8, [1e-4]), (16, [2e-4])):
        json_db.commit_tuning_record(record(json_db, matmul(n), secs, target))


def test_plain_metaschedule_logs_need_a_matching_hardware_key(db_url: str, tmp_path: Path) -> None:
    db = open_database(db_url, TARGET, team="vision")
    other = open_database(db_url, ONE_CORE)
    logs = tmp_path / "logs"
    _plain_log(logs, TARGET)
    with pytest.raises(TunerError, match="--hardware KEY"):
        import_database(db.engine, logs)
    with pytest.raises(TunerError, match="unknown hardware key 'cpu-0000'"):
        import_database(db.engine, logs, hardware="cpu-0000")
    with pytest.raises(TunerError, match=f"{RECORD_FILE} line 1: measured with num-cores=2, but hardware"):
        import_database(db.engine, logs, hardware=other.provenance.hardware_key)
    assert len(db) == 0 and len(other) == 0
    result = import_database(db.engine, logs, hardware=db.provenance.hardware_key, default_team="vision")
    assert (result.records_new, result.workloads_new) == (2, 2)
    checked(db, matmul(16))
    assert db.best(matmul(16)).mean_run_secs == pytest.approx(2e-4)
    assert db.best(matmul(16)).team == "vision"


def _corrupt(directory: Path, name: str, line: int, text: str) -> None:
    path = directory / name
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("name", "line", "text", "message"),
    [
        (RECORD_FILE, 2, "{not json", f"{RECORD_FILE} line 2: not JSON"),
        (RECORD_FILE, 2, "[7, [[], null, {}, null]]", f"{RECORD_FILE} line 2: workload index 7 is not in"),
        (RECORD_FILE, 2, "[1]", f"{RECORD_FILE} line 2: expected"),
        (WORKLOAD_FILE, 2, '["1", "not-a-module"]', f"{WORKLOAD_FILE} line 2: workload does not deserialize"),
    ],
)
def test_malformed_files_commit_nothing(tmp_path: Path, name: str, line: int, text: str, message: str) -> None:
    source = open_database(f"sqlite:///{tmp_path / 'src.sqlite'}", TARGET)
    for n in (8, 12, 16):
        source.commit_tuning_record(record(source, matmul(n), [1e-4]))
    export_database(source.engine, tmp_path / "out")
    (tmp_path / "out" / SIDECAR_FILE).unlink()  # plain logs: lines may be edited
    _corrupt(tmp_path / "out", name, line, text)
    dest = open_database(f"sqlite:///{tmp_path / 'dest.sqlite'}", TARGET)
    with pytest.raises(TunerError, match=message):
        import_database(dest.engine, tmp_path / "out", hardware=dest.provenance.hardware_key)
    assert len(dest) == 0
    assert not dest.has_workload(matmul(8))


def test_bad_target_and_edited_export_are_refused(tmp_path: Path) -> None:
    source = open_database(f"sqlite:///{tmp_path / 'src.sqlite'}", TARGET)
    for n in (8, 12):
        source.commit_tuning_record(record(source, matmul(n), [1e-4]))
    out = tmp_path / "out"
    export_database(source.engine, out)
    lines = (out / RECORD_FILE).read_text().splitlines()
    index, payload = json.loads(lines[1])
    payload[2] = {"kind": "no-such-target"}
    lines[1] = json.dumps([index, payload])
    (out / RECORD_FILE).write_text("\n".join(lines) + "\n")
    dest = open_database(f"sqlite:///{tmp_path / 'dest.sqlite'}", TARGET)
    with pytest.raises(TunerError, match="changed after it was exported"):
        import_database(dest.engine, out)
    (out / SIDECAR_FILE).unlink()
    with pytest.raises(TunerError, match=f"{RECORD_FILE} line 2: target does not parse"):
        import_database(dest.engine, out, hardware=dest.provenance.hardware_key)
    assert len(dest) == 0
    with pytest.raises(TunerError, match="has no database_workload.json"):
        import_database(dest.engine, tmp_path)


def test_malformed_sidecar_is_refused(tmp_path: Path) -> None:
    source = open_database(f"sqlite:///{tmp_path / 'src.sqlite'}", TARGET)
    source.commit_tuning_record(record(source, matmul(8), [1e-4]))
    out = tmp_path / "out"
    export_database(source.engine, out)
    sidecar = json.loads((out / SIDECAR_FILE).read_text())
    dest = open_database(f"sqlite:///{tmp_path / 'dest.sqlite'}", {"kind": "llvm", "num-cores": 3})
    for broken in ({**sidecar, "records": None}, {**sidecar, "files": {"../../etc/passwd": "x"}},
                   {**sidecar, "hardware": {}}):
        (out / SIDECAR_FILE).write_text(json.dumps(broken))
        with pytest.raises(TunerError, match=SIDECAR_FILE):
            import_database(dest.engine, out)
    assert len(open_database(f"sqlite:///{tmp_path / 'dest.sqlite'}", TARGET)) == 0
