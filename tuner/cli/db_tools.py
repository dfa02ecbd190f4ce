"""The `tuner db` operations on a database URL: open, migrate, and turn driver errors into one line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from tuner.db import admin, transfer
from tuner.db.engine import error_reason, make_engine, redact_url
from tuner.db.migrate import current_revision, head_revision, upgrade

from ..config import Settings
from ..errors import TunerError
from ..progress import Progress

if TYPE_CHECKING:
    from ..search.record_checks import CheckStats

T = TypeVar("T")


@contextmanager
def migrated_engine(url: str, migrate: bool = True) -> Iterator[Engine]:
    """An engine on a schema at head; SQL errors become a TunerError naming the (redacted) URL."""
    engine = make_engine(url)
    try:
        if migrate:
            upgrade(engine)
        yield engine
    except SQLAlchemyError as exc:
        raise TunerError(f"database {redact_url(url)}: {error_reason(exc)}") from None
    finally:
        engine.dispose()


def _with_engine(settings: Settings, url: str | None, work: Callable[[Engine], T]) -> T:
    with migrated_engine(url or settings.resolved_db_url()) as engine:
        return work(engine)


def upgrade_database(settings: Settings, url: str | None) -> tuple[str | None, str]:
    """(revision before, revision after): running it again is a no-op."""
    with migrated_engine(url or settings.resolved_db_url(), migrate=False) as engine:
        before = current_revision(engine)
        upgrade(engine)
        return before, head_revision(engine)


def stats(settings: Settings, url: str | None) -> dict[str, Any]:
    report = _with_engine(settings, url, admin.database_stats)
    report["db"] = redact_url(url or settings.resolved_db_url())
    return report


def export(settings: Settings, url: str | None, out_dir: Path, hardware: str | None) -> transfer.ExportResult:
    return _with_engine(settings, url, lambda e: transfer.export_database(e, out_dir, hardware))


def import_(settings: Settings, url: str | None, directory: Path, hardware: str | None,
            team: str | None) -> transfer.ImportResult:
    return _with_engine(
        settings, url,
        lambda e: transfer.import_database(e, directory, hardware, team, default_team=settings.team),
    )


def prune(settings: Settings, url: str | None, keep_top: int, dry_run: bool) -> admin.PruneResult:
    return _with_engine(settings, url, lambda e: admin.prune(e, keep_top, dry_run))


def _key_targets(engine: Engine, hardware: str | None) -> dict[str, dict[str, Any]]:
    """Hardware keys with records (or `hardware`) and a target of each, from one of its records."""
    from sqlalchemy import func, select

    from tuner.db import models

    r = models.TuningRecord
    stmt = select(r.hardware_key, func.min(r.target_json)).group_by(r.hardware_key)
    if hardware:
        stmt = stmt.where(r.hardware_key == hardware)
    with engine.connect() as conn:
        found = {key: json.loads(target) for key, target in conn.execute(stmt)}
    if hardware and hardware not in found:
        raise TunerError(f"no records of hardware {hardware!r} in the database (see `tuner db stats`)")
    return found


def _here(target: dict[str, Any]) -> str | None:
    """This machine's hardware key for a target, or None when it lacks that hardware."""
    from ..hardware import fingerprint_for

    try:
        return fingerprint_for(target).key
    except TunerError:  # a CUDA target on a machine without that GPU
        return None


def verify(settings: Settings, url: str | None, hardware: str | None, team: str | None,
           progress: Progress) -> list[tuple[str, CheckStats]]:
    """Check the records each workload would be served (record_checks.py) on this machine's
    hardware: without --hardware every key of the database that this machine has, with it
    that key, which it must have (a kernel is checked where it runs)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.target import Target

    from tuner.cluster.local import LocalChecker

    from ..search.record_checks import check_records
    from ..search.tuning import tuning_cores
    from ..search.job_database import open_database

    db_url = url or settings.resolved_db_url()
    with migrated_engine(db_url) as engine:
        targets = _key_targets(engine, hardware)
    mine = {key: target for key, target in targets.items() if _here(target) == key}
    if hardware and hardware not in mine:
        raise TunerError(f"records of hardware {hardware} can only be checked on that hardware, and this "
                         f"machine is not it (its keys here: {', '.join(sorted(mine)) or 'none of the database'})")
    results = []
    for key, target_dict in sorted(mine.items()):
        target = Target(target_dict)
        database = open_database(db_url, target_dict, team or settings.team)
        tasks = [ms.ExtractedTask(f"workload {wid}", mod, target, [mod], 1) for wid, mod in database.stored_workloads()]
        progress.message(f"{key}: checking the records of {len(tasks)} workload(s)")
        checker = LocalChecker(tuning_cores(target), settings.checks.timeout_s)
        try:
            results.append((key, check_records(tasks, target, database, checker, settings, progress)))
        finally:
            checker.close()
    return results


def cost_models(settings: Settings, url: str | None, hardware: str | None, team: str | None,
                train: bool, drop: bool) -> tuple[str, list[dict[str, Any]]]:
    """`tuner db model`: what was done ("" to show), and the models of the family of
    `hardware` (default: this CPU), or of every family when showing without --hardware."""
    from tuner.db import cost_models as store

    from tvm.target import Target

    from ..search.cost_model_training import family_of, train_family
    from ..hardware import fingerprint_for
    from ..targets import host_cpu_target
    from ..search.tuning import tuning_cores

    with migrated_engine(url or settings.resolved_db_url()) as engine:
        if not (train or drop):
            family = family_of(engine, hardware) if hardware else None
            return "", store.listing(engine, family)
        host = host_cpu_target()
        key = hardware or fingerprint_for(host).key
        family = family_of(engine, key)
        if drop:
            gone = store.drop(engine, family, team)
            return f"dropped {gone} model(s) of family {family}", store.listing(engine, family)
        owners = [team] if team else [store.SHARED, *store.owners_with_private_records(engine, family)]
        cores = tuning_cores(Target(host))
        for owner in owners:
            train_family(engine, family, owner, cores, settings.cost_model.min_records)
        return f"trained {len(owners)} model(s) of family {family}", store.listing(engine, family)
