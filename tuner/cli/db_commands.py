"""`tuner db ...`: migrate, inspect, export, import and prune the tuning database."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

db_app = typer.Typer(no_args_is_help=True, help="Manage the tuning database (default: TUNER_DB_URL or the SQLite cache).")
out = Console()

DbOption = Annotated[Optional[str], typer.Option("--db", help="SQLAlchemy URL of the tuning database (env TUNER_DB_URL).")]
HardwareOption = Annotated[Optional[str], typer.Option("--hardware", help="A hardware key (see `tuner db stats`).")]


def _settings():  # noqa: ANN202 - Settings, imported lazily to keep --help fast
    from ..config import get_settings

    return get_settings()


@db_app.command()
def upgrade(db: DbOption = None) -> None:
    """Apply the Alembic migrations up to the newest schema; a no-op when already there."""
    from . import db_tools

    before, after = db_tools.upgrade_database(_settings(), db)
    if before == after:
        out.print(f"schema already at revision {after}")
    else:
        out.print(f"schema upgraded from {before or 'empty'} to revision {after}")


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.1f} MB"


@db_app.command()
def stats(db: DbOption = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Workloads and records, per hardware key and per team, and the size on disk."""
    from . import db_tools

    report = db_tools.stats(_settings(), db)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    out.print(
        f"{report['db']} (schema {report['revision']}): {report['workloads']} workloads, "
        f"{report['records']} records ({report['failed_records']} failed), {_mb(report['size_bytes'])}"
    )
    hw = Table(title="per hardware key (families: --json)")
    hw.add_column("key", no_wrap=True)
    hw.add_column("CPU / GPU")
    for col in ("cores", "workloads", "records", "valid"):
        hw.add_column(col, justify="right")
    for row in report["hardware"]:
        hw.add_row(row["key"], str(row["cpu_model"] or row["kind"]), str(row["num_cores"] or "-"),
                   str(row["workloads"]), str(row["records"]), str(row["valid"]))
    out.print(hw)
    teams = Table(title="per team")
    for col in ("team", "records", "private", "hardware keys"):
        teams.add_column(col, justify="left" if col == "team" else "right")
    for row in report["teams"]:
        teams.add_row(str(row["team"] or "-"), str(row["records"]), str(row["private"]), str(row["hardware_keys"]))
    out.print(teams)


@db_app.command("export")
def export_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (must not hold an export already).")],
    db: DbOption = None,
    hardware: HardwareOption = None,
) -> None:
    """Write records as a MetaSchedule JSON database, plus tuner_provenance.json (hardware, teams)."""
    from . import db_tools

    result = db_tools.export(_settings(), db, out_dir, hardware)
    out.print(f"exported {result.records} records of {result.workloads} workloads "
              f"({', '.join(result.hardware) or 'no hardware'}) to {result.directory}")


@db_app.command("import")
def import_cmd(
    directory: Annotated[Path, typer.Argument(help="Folder with database_workload.json and database_tuning_record.json.")],
    db: DbOption = None,
    hardware: Annotated[Optional[str], typer.Option(
        "--hardware", help="Hardware the records were measured on: required for plain MetaSchedule logs; "
        "with a tuner export, imports only that key's records.")] = None,
    team: Annotated[Optional[str], typer.Option(help="Team to attribute the records to (default: the export's, or the configured team).")] = None,
) -> None:
    """Import a MetaSchedule JSON database, all or nothing; records already present are skipped."""
    from . import db_tools

    r = db_tools.import_(_settings(), db, directory, hardware, team)
    out.print(f"imported {r.records_new} records ({r.records_duplicate} already present) of "
              f"{r.workloads_new + r.workloads_known} workloads ({r.workloads_new} new) for "
              f"{', '.join(r.hardware) or 'no hardware'}")


@db_app.command()
def prune(
    keep_top: Annotated[int, typer.Option(min=1, help="Records to keep per workload and hardware key.")],
    db: DbOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go, delete nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Keep the best K records per workload and hardware (per team for private ones); drop failed ones."""
    from . import db_tools

    result = db_tools.prune(_settings(), db, keep_top, dry_run)
    if as_json:
        print(json.dumps(asdict(result), indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    out.print(f"{verb} {result.records_deleted} of {result.records_before} records "
              f"({result.failed_deleted} failed), keeping the best {keep_top} per workload and hardware")


@db_app.command("verify")
def verify_cmd(
    db: DbOption = None,
    hardware: Annotated[Optional[str], typer.Option(
        "--hardware", help="Check only this hardware key's records (this machine must have that hardware).")] = None,
    team: Annotated[Optional[str], typer.Option(help="Check the records this team may read (default: the configured team).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Check the records each workload would be served: its kernel against the workload's unscheduled one.

    A run checks a record before serving it; this does it on demand, e.g. after `tuner db import`
    or a TVM upgrade. Wrong records are marked and never served; the next ones are checked."""
    from . import db_tools
    from ..progress import LogProgress, SilentProgress

    results = db_tools.verify(_settings(), db, hardware, team, SilentProgress() if as_json else LogProgress())
    if as_json:
        print(json.dumps({key: stats.as_dict() for key, stats in results}, indent=2))
        return
    if not results:
        out.print("no records of this machine's hardware in the database")
        return
    table = Table(title="record checks")
    table.add_column("hardware key", no_wrap=True)
    for col in ("checked", "passed", "wrong output", "check failed", "seconds"):
        table.add_column(col, justify="right")
    for key, stats in results:
        table.add_row(key, str(stats.checked), str(stats.passed), str(stats.wrong), str(stats.failed),
                      f"{stats.seconds:.1f}")
    out.print(table)
    for key, stats in results:
        for bad in stats.rejected:
            out.print(f"{key} {bad['task']}: record {bad['record_id']} rejected: {bad['reason']}")


@db_app.command("model")
def model_cmd(
    db: DbOption = None,
    hardware: Annotated[Optional[str], typer.Option(
        "--hardware", help="The hardware key whose family's models to show, train or drop (train/drop default: this CPU).")] = None,
    team: Annotated[Optional[str], typer.Option(help="Train or drop only this team's model (its private records and the shared ones).")] = None,
    train: Annotated[bool, typer.Option("--train", help="Train the family's models now from its records.")] = False,
    drop: Annotated[bool, typer.Option("--drop", help="Delete the family's models.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The cost models every search starts from: one per hardware family (and per team with private records)."""
    from . import db_tools
    from ..errors import TunerError

    if train and drop:
        raise TunerError("--train and --drop exclude each other")
    done, rows = db_tools.cost_models(_settings(), db, hardware, team, train, drop)
    if as_json:
        print(json.dumps({"done": done, "models": rows}, indent=2))
        return
    if done:
        out.print(done)
    if not rows:
        out.print("no cost models in the database yet: `tuner db model --train` trains this CPU family's")
        return
    table = Table(title="cost models")
    for col in ("family", "owner", "TVM", "records", "workloads", "hold-out rank corr.", "MB", "trained s", "created"):
        table.add_column(col, justify="right" if col in ("records", "workloads", "hold-out rank corr.", "MB", "trained s") else "left")
    for m in rows:
        score = "-" if m["holdout_spearman"] is None else f"{m['holdout_spearman']:.2f}"
        table.add_row(m["family"], m["owner"], m["tvm_version"], str(m["records"]), str(m["workloads"]), score,
                      f"{m['bytes'] / 1e6:.1f}", f"{m['train_seconds']:.1f}", m["created_at"][:19])
    out.print(table)
