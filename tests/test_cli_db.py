"""`tuner db ...` as users run it: upgrade, stats, export, import, prune, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_bad_input import assert_clean_error, tuner_cli
from tests.tir_helpers import TARGET, matmul, record
from tuner.db.transfer import RECORD_FILE
from tuner.pipeline import open_database


def test_db_commands_end_to_end(tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path / 'src.sqlite'}"
    dest = f"sqlite:///{tmp_path / 'dest.sqlite'}"
    up = tuner_cli(["db", "upgrade", "--db", src], tmp_path)
    assert up.returncode == 0 and "upgraded from empty to revision 0006" in up.stdout, up.stderr
    again = tuner_cli(["db", "upgrade", "--db", src], tmp_path)
    assert "already at revision 0006" in again.stdout

    db = open_database(src, TARGET, team="vision")
    for n, secs in ((8, [1e-4]), (8, [2e-4]), (8, [3e-4]), (12, [1e-4])):
        db.commit_tuning_record(record(db, matmul(n), secs))
    key = db.provenance.hardware_key

    stats = json.loads(tuner_cli(["db", "stats", "--json", "--db", src], tmp_path).stdout)
    assert (stats["workloads"], stats["records"]) == (2, 4)
    assert stats["hardware"][0]["key"] == key and stats["teams"][0]["team"] == "vision"
    table = tuner_cli(["db", "stats", "--db", src], tmp_path)
    assert table.returncode == 0 and key in table.stdout

    exported = tuner_cli(["db", "export", str(tmp_path / "out"), "--db", src], tmp_path)
    assert "exported 4 records of 2 workloads" in exported.stdout, exported.stderr
    imported = tuner_cli(["db", "import", str(tmp_path / "out"), "--db", dest], tmp_path)
    assert "imported 4 records (0 already present) of 2 workloads (2 new)" in imported.stdout, imported.stderr
    twice = tuner_cli(["db", "import", str(tmp_path / "out"), "--db", dest], tmp_path)
    assert "imported 0 records (4 already present)" in twice.stdout

    dry = json.loads(tuner_cli(["db", "prune", "--keep-top", "1", "--dry-run", "--json", "--db", dest], tmp_path).stdout)
    assert dry["records_deleted"] == 2 and dry["dry_run"]
    pruned = tuner_cli(["db", "prune", "--keep-top", "1", "--db", dest], tmp_path)
    assert "deleted 2 of 4 records" in pruned.stdout
    assert json.loads(tuner_cli(["db", "stats", "--json", "--db", dest], tmp_path).stdout)["records"] == 2


def test_db_command_errors_are_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    db = open_database(url, TARGET)
    db.commit_tuning_record(record(db, matmul(8), [1e-4]))
    out = tmp_path / "out"
    assert tuner_cli(["db", "export", str(out), "--db", url], tmp_path).returncode == 0
    (out / "tuner_provenance.json").unlink()
    assert_clean_error(tuner_cli(["db", "import", str(out), "--db", url], tmp_path), "--hardware KEY")
    (out / RECORD_FILE).write_text((out / RECORD_FILE).read_text() + "[0, oops]\n")
    assert_clean_error(
        tuner_cli(["db", "import", str(out), "--db", url, "--hardware", db.provenance.hardware_key], tmp_path),
        f"{RECORD_FILE} line 2: not JSON",
    )
    assert_clean_error(tuner_cli(["db", "export", str(out), "--db", url], tmp_path), "already holds")
    assert_clean_error(tuner_cli(["db", "stats", "--db", "postgresql+psycopg://u:secret@127.0.0.1:1/x"], tmp_path),
                       "cannot reach database")
    proc = tuner_cli(["db", "stats", "--db", "postgresql+psycopg://u:secret@127.0.0.1:1/x"], tmp_path)
    assert "secret" not in proc.stderr
    assert tuner_cli(["db", "prune", "--keep-top", "0", "--db", url], tmp_path).returncode == 2
