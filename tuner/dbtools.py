"""The `tuner db` operations on a database URL: open, migrate, and turn driver errors into one line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from tuner.db import admin, transfer
from tuner.db.engine import error_reason, make_engine, redact_url
from tuner.db.migrate import current_revision, head_revision, upgrade

from .config import Settings
from .errors import TunerError

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
